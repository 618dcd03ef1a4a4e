"""Many processes and many machines through accelerate: parity, launch options, errors, Ctrl-C, strategy.

The parity test is the contract of data parallelism: 2 processes × batch b take the same optimizer steps,
with the same losses, as 1 process × batch 2b (tests/test_parity.py checks it for every task). Two
launchers on 127.0.0.1 stand in for two machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llmkit import launch
from llmkit.recipe import load_recipe
from llmkit.trainer import latest_checkpoint
from tests.scale_helpers import (
    clm_recipe,
    llmkit_command,
    log_history,
    losses,
    run_llmkit,
    subprocess_env,
    train_in_process,
    write_recipe,
)

REPO = Path(__file__).resolve().parent.parent


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.integration
def test_two_processes_match_one_process_with_twice_the_batch(tmp_path: Path) -> None:
    """`--num-processes 2` on a machine without GPUs: two CPU processes (said in one line), not a refusal."""
    one, two = tmp_path / "one", tmp_path / "two"
    # No dropout: each process draws its own dropout masks, which is not the parity being tested.
    single = write_recipe(
        tmp_path / "one.yaml", clm_recipe(one, dropout=False, max_steps=6, per_device_train_batch_size=8)
    )
    double = write_recipe(
        tmp_path / "two.yaml", clm_recipe(two, dropout=False, max_steps=6, per_device_train_batch_size=4)
    )
    _, reference = train_in_process(single)

    result = run_llmkit("pretrain", double, "--num-processes", "2", *(["--cpu"] if has_gpu() else []))
    assert result.returncode == 0, result.stderr[-3000:]
    if not has_gpu():
        assert result.stderr.count("no GPU here: running 2 processes on the CPU (gloo backend)") == 1
    facts = json.loads((two / "run.json").read_text())
    assert facts["world_size"] == 2 and facts["num_machines"] == 1 and facts["strategy"] == "DDP"
    assert (facts["per_device_train_batch_size"], facts["global_train_batch_size"]) == (4, 8)
    parallel = log_history(two)
    expected, got = losses(reference), losses(parallel)
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), f"step {step}: {got[step]} vs {expected[step]}"
    assert got[6] < got[1], "the loss did not fall"
    # only the main process prints: one parameter summary, one strategy line, one metrics table
    assert result.stdout.count("trainable parameters:") == 1
    assert result.stdout.count("strategy: DDP, 2 processes on 1 machine (cpu, gloo); batch 4 per process") == 1
    assert result.stdout.count("perplexity") == 1


def test_launch_options_become_accelerate_launch_options() -> None:
    arguments = ["finetune", "r.yaml", "--num-processes", "4", "--cpu", "a.b=1"]
    command, environment = launch.accelerate_command(launch.LaunchOptions(4, cpu=True), True, arguments)
    assert command[:3] == [sys.executable, "-m", "llmkit.launch"]
    assert command[command.index("--num_processes") + 1] == "4" and "--multi_gpu" in command
    assert command[command.index("--num_machines") + 1] == "1"
    assert command[-8:] == ["-m", "llmkit", *arguments]  # the workers run the user's own command line
    assert environment["ACCELERATE_USE_CPU"] == "1"

    # many machines: counted as accelerate counts them (processes in all), rendezvous at rank 0's address
    many = launch.LaunchOptions(4, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1")
    options = launch.accelerate_arguments(many, cpu=False)
    assert options[0] == "--multi_gpu"
    for name, value in [("--num_processes", "4"), ("--num_machines", "2"), ("--machine_rank", "1")]:
        assert options[options.index(name) + 1] == value, name
    assert options[options.index("--main_process_ip") + 1] == "10.0.0.1"
    assert options[options.index("--main_process_port") + 1] == str(launch.DEFAULT_PORT)  # all machines agree


def test_an_accelerate_config_file_decides_what_it_holds(tmp_path: Path) -> None:
    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\nnum_processes: 8\nnum_machines: 2\n")
    options = launch.accelerate_arguments(launch.LaunchOptions(accelerate_config=config, machine_rank=1), cpu=False)
    assert options[:2] == ["--config_file", str(config)]
    assert "--multi_gpu" not in options and "--num_processes" not in options and "--num_machines" not in options
    assert options[options.index("--machine_rank") + 1] == "1"
    assert launch.needs_relaunch(launch.LaunchOptions(accelerate_config=config))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (launch.LaunchOptions(0), "--num-processes must be at least 1"),
        (launch.LaunchOptions(3, num_machines=2, machine_rank=0, main_process_ip="h"), "cannot be shared evenly"),
        (launch.LaunchOptions(2, num_machines=2, machine_rank=0), "needs --main-process-ip"),
        (launch.LaunchOptions(2, num_machines=2, main_process_ip="h"), "needs --machine-rank"),
        (launch.LaunchOptions(2, num_machines=2, machine_rank=2, main_process_ip="h"), "from 0 to 1"),
        (launch.LaunchOptions(accelerate_config=Path("no/such.yaml")), "no such file"),
    ],
)
def test_launch_options_that_describe_no_run_are_refused_before_anything_starts(
    options: launch.LaunchOptions, message: str
) -> None:
    from llmkit.errors import LlmkitError

    with pytest.raises(LlmkitError, match=message):
        launch.needs_relaunch(options)


def test_a_process_with_a_rank_never_launches_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """`accelerate launch -m llmkit ... --num-processes 2` and the workers of `--num-processes` run in place."""
    monkeypatch.setenv("RANK", "1")
    assert not launch.needs_relaunch(launch.LaunchOptions(2, num_machines=2, machine_rank=0, main_process_ip="h"))


def test_the_strategy_line_says_what_runs_and_names_a_fallback() -> None:
    """accelerate runs `fsdp:` on the CPU as DDP without a word; llmkit says so (and the run goes on)."""
    from types import SimpleNamespace

    facts = {
        "strategy": "DDP",
        "world_size": 4,
        "num_machines": 2,
        "device_type": "cpu",
        "backend": "gloo",
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 2,
        "global_train_batch_size": 64,
    }
    lines = launch.strategy_lines(facts, SimpleNamespace(fsdp=["full_shard"], deepspeed=None))
    assert lines[0] == (
        "strategy: DDP, 4 processes on 2 machines (cpu, gloo); batch 8 per process × 4 × 2 accumulation = 64"
    )
    assert len(lines) == 2 and lines[1].startswith("warning: recipe field `training.fsdp` asks for FSDP, but this run")
    alone = {**facts, "strategy": "single process", "world_size": 1, "num_machines": 1, "backend": None}
    lines = launch.strategy_lines(alone, SimpleNamespace(fsdp=[], deepspeed={"zero_optimization": {"stage": 2}}))
    assert lines[0].startswith("strategy: single process, 1 process on 1 machine (cpu); batch 8")
    assert lines[1].endswith("asks for DeepSpeed, but this run is a single process")


@pytest.mark.integration
def test_a_user_error_in_many_processes_is_one_line_and_exit_2(tmp_path: Path) -> None:
    recipe = clm_recipe(tmp_path / "run")
    recipe["data"]["columns"] = {"text": "no_such_column"}  # found by the workers, not before the launch
    result = run_llmkit("pretrain", write_recipe(tmp_path / "r.yaml", recipe), "--num-processes", "2", "--cpu")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no_such_column" in errors[0], output[-3000:]
    assert "Traceback" not in output and "ChildFailedError" not in output, output[-3000:]


@pytest.mark.integration
def test_ctrl_c_in_many_processes_saves_once_says_it_once_and_resumes(tmp_path: Path) -> None:
    output = tmp_path / "run"
    recipe_path = write_recipe(tmp_path / "r.yaml", clm_recipe(output, max_steps=200, save_steps=1000))
    log = tmp_path / "log.txt"
    command = llmkit_command("pretrain", recipe_path, "--num-processes", "2", "--cpu")
    with log.open("w") as handle:
        # A session of its own: Ctrl-C in a terminal reaches the whole foreground process group.
        process = subprocess.Popen(
            command, env=subprocess_env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.time() + 240
        while process.poll() is None and time.time() < deadline and "loss" not in log.read_text():
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
    text = log.read_text()
    assert process.returncode == 130, text[-3000:]
    stopped = [line for line in text.splitlines() if line.startswith(("stopped:", "error:"))]
    assert len(stopped) == 1 and "checkpoint saved in" in stopped[0], text[-3000:]
    assert "--num-processes 2 --cpu --resume latest" in stopped[0], stopped
    assert "Traceback" not in text, text[-3000:]
    checkpoint = latest_checkpoint(output)
    assert checkpoint is not None, text[-3000:]
    step = int(checkpoint.name.split("-")[1])
    assert 0 < step < 200

    resumed = run_llmkit("pretrain", recipe_path, "--num-processes", "2", "--cpu", "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((output / "run.json").read_text())["global_step"] == 200
    assert min(s for s in losses(log_history(output)) if s > step) == step + 1


# ---------------------------------------------------------------------------------------------- two machines


def start_machine(recipe: Path, rank: int, port: int, log: Path, *extra: str) -> subprocess.Popen:
    """One "machine" of a two-machine run on 127.0.0.1: its own launcher, one CPU process."""
    options = ["--num-processes", "2", "--num-machines", "2", "--machine-rank", str(rank)]
    options += ["--main-process-ip", "127.0.0.1", "--main-process-port", str(port), "--cpu"]
    with log.open("w") as handle:
        return subprocess.Popen(
            llmkit_command("pretrain", recipe, *options, *extra),
            env=subprocess_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all it started (torch elastic starts each worker in a session of its own)."""
    import psutil

    parent = psutil.Process(pid)
    for process in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def run_pair(recipe: Path, tmp_path: Path, name: str, *extra: str, stop_after: Path | None = None) -> list[Any]:
    """Both machines of the pair; with `stop_after`, both are killed as soon as that checkpoint is complete."""
    port = launch.free_port()
    machines = [start_machine(recipe, rank, port, tmp_path / f"{name}-{rank}.log", *extra) for rank in (0, 1)]
    deadline = time.time() + 300
    while time.time() < deadline and any(m.poll() is None for m in machines):
        if stop_after is not None and latest_checkpoint(stop_after) is not None:
            for machine in machines:
                kill_tree(machine.pid)
            break
        time.sleep(0.05)
    for machine in machines:
        machine.wait(timeout=60)
    return [(m.returncode, (tmp_path / f"{name}-{rank}.log").read_text()) for rank, m in enumerate(machines)]


@pytest.mark.integration
def test_two_machines_train_like_one_process_and_resume_as_a_pair(tmp_path: Path) -> None:
    steps = 40
    reference_run, pair_run = tmp_path / "one", tmp_path / "pair"
    single = clm_recipe(reference_run, dropout=False, max_steps=steps, per_device_train_batch_size=8, save_steps=4)
    _, reference = train_in_process(write_recipe(tmp_path / "one.yaml", single))
    pair = write_recipe(
        tmp_path / "pair.yaml",
        clm_recipe(pair_run, dropout=False, max_steps=steps, per_device_train_batch_size=4, save_steps=4),
    )
    # The pair is killed (both machines, SIGKILL) once a checkpoint is complete, then resumes as a pair.
    killed = run_pair(pair, tmp_path, "first", stop_after=pair_run)
    checkpoint = latest_checkpoint(pair_run)
    assert checkpoint is not None, killed[0][1][-3000:] + killed[1][1][-3000:]
    stopped_at = int(checkpoint.name.split("-")[1])
    assert stopped_at < steps and not (pair_run / "metrics.json").exists(), "the pair finished before the kill"
    # written by rank 0 of the pair alone (one model, one state); rank 1 adds only its own RNG state
    assert len(list(checkpoint.glob("*.safetensors"))) == 1
    assert {p.name for p in checkpoint.glob("rng_state*")} <= {"rng_state_0.pth", "rng_state_1.pth"}
    assert "strategy:" in killed[0][1] and "strategy:" not in killed[1][1], "machine 1 must not speak for the run"

    finished = run_pair(pair, tmp_path, "resumed", "--resume", "latest")
    for rank, (code, text) in enumerate(finished):
        assert code == 0, f"machine {rank}:\n{text[-3000:]}"
        assert "Traceback" not in text
    assert finished[0][1].count("strategy: DDP, 2 processes on 2 machines (cpu, gloo)") == 1
    assert "strategy:" not in finished[1][1]
    facts = json.loads((pair_run / "run.json").read_text())
    assert (facts["world_size"], facts["num_machines"], facts["global_train_batch_size"]) == (2, 2, 8)
    assert facts["global_step"] == steps
    expected, got = losses(reference), losses(log_history(pair_run))
    assert sorted(got) == sorted(expected) == list(range(1, steps + 1))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), f"step {step}: {got[step]} vs {expected[step]}"
    worst = max(abs(got[s] - expected[s]) / expected[s] for s in expected)
    print(f"two machines vs one process, resumed after step {stopped_at}: max relative loss difference {worst:.1e}")


# ---------------------------------------------------------------------------------------------- evaluation


def spread_worker(rank: int, world: int, port: int, folder: str) -> None:
    """One of two gloo processes: generation and span search spread over both, written by each."""
    import torch.distributed as dist

    from llmkit.tasks.mechanisms import shards

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = evaluation_outputs(across_processes=True)
        calls: list[int] = []
        results["lockstep"] = shards.spread(list(range(5)), lambda c: calls.append(c) or c * c, lockstep=True)
        results["calls"] = calls
        Path(folder, f"rank-{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


class DigitTokenizer:
    """Just what `generation.generate` needs: ids → text."""

    pad_token_id = 0
    eos_token_id = 1

    def batch_decode(self, rows: Any, skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(str(int(i)) for i in row if int(i) > 1) for row in rows]


def evaluation_outputs(across_processes: bool) -> dict[str, Any]:
    """Texts of a random tiny GPT-2 for 11 prompts of different lengths (batches of 3: shares 6 and 5), and
    the best spans of 7 questions from random logits."""
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmkit.recipe import GenerationSection, load_recipe
    from llmkit.tasks.mechanisms.generation import generate
    from llmkit.tasks.qa.extractive import best_spans

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=60, n_positions=64, bos_token_id=1, eos_token_id=1)
    model = GPT2LMHeadModel(config)
    generator = np.random.default_rng(0)
    prompts = [[int(t) for t in generator.integers(2, 60, size=int(n))] for n in generator.integers(2, 12, size=11)]
    texts = generate(
        model, DigitTokenizer(), prompts, GenerationSection(max_new_tokens=5, batch_size=3), None, across_processes
    )
    from datasets import Dataset

    contexts = [f"context number {i} with several words in it" for i in range(7)]
    owners = [0, 0, 1, 2, 3, 3, 3, 4, 5, 6]  # windows of each question
    offsets = [[None, *[(c, c + 1) for c in range(0, 30, 2)]] for _ in owners]
    features = Dataset.from_dict({"example_index": owners, "offset_mapping": offsets})
    logits = generator.normal(size=(2, len(owners), 16))
    recipe = load_recipe(REPO / "recipes" / "ci" / "tiny-bert-qa.yaml")
    answers, scores = best_spans(contexts, features, logits[0], logits[1], recipe, False, across_processes)
    return {"texts": texts, "answers": answers, "scores": scores}


@pytest.mark.integration
def test_generation_and_span_search_spread_over_processes_give_one_process_results(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    alone = evaluation_outputs(across_processes=False)
    assert len(set(alone["texts"])) > 5 and len(set(alone["answers"])) > 3, alone  # an order would show
    mp.spawn(spread_worker, args=(2, launch.free_port(), str(tmp_path)), nprocs=2, join=True)
    shares = {}
    for rank in (0, 1):
        results = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        shares[rank] = results.pop("calls")
        assert results.pop("lockstep") == [0, 1, 4, 9, 16]
        assert results == alone, f"rank {rank}"
    # chunks round-robin; in lockstep rank 1 repeats its last chunk so both run three
    assert shares == {0: [0, 2, 4], 1: [1, 3, 3]}


def test_fsdp_and_deepspeed_recipes_pass_their_settings_to_training_arguments() -> None:
    from llmkit.trainer import training_arguments

    fsdp = load_recipe(REPO / "recipes" / "gpt2-wikitext2-fsdp.yaml")
    arguments = training_arguments(fsdp)
    assert arguments.fsdp and arguments.fsdp_config["transformer_layer_cls_to_wrap"] == ["GPT2Block"]
    assert arguments.fsdp_config["version"] == 2 and arguments.bf16
    # DeepSpeed is not installed here: check the pass-through without building TrainingArguments.
    deepspeed = load_recipe(REPO / "recipes" / "bert-sst2-deepspeed.yaml").training.arguments()["deepspeed"]
    assert deepspeed["zero_optimization"]["stage"] == 2
    assert deepspeed["train_micro_batch_size_per_gpu"] == "auto"


def test_bf16_activation_checkpointing_and_lora_run_on_cpu(tmp_path: Path) -> None:
    """Precision and memory options must not break a CPU run (full model, then LoRA on a bf16-loaded base)."""
    full = tmp_path / "full"
    recipe = clm_recipe(full, max_steps=4, save_steps=1000, bf16=True, gradient_checkpointing=True)
    metrics, history = train_in_process(write_recipe(tmp_path / "full.yaml", recipe))
    assert all(0 < loss < 20 for loss in losses(history).values()) and metrics["eval_loss"] < 20

    lora = clm_recipe(tmp_path / "lora", max_steps=4, save_steps=1000, bf16=True, gradient_checkpointing=True)
    lora["model"] = {"name_or_path": str(full), "dtype": "bfloat16", "attn_implementation": "sdpa"}
    del lora["tokenizer"]
    lora["peft"] = {"r": 4}
    metrics, history = train_in_process(write_recipe(tmp_path / "lora.yaml", lora))
    grads = [entry["grad_norm"] for entry in history if "grad_norm" in entry]
    assert grads and all(g > 0 for g in grads), "no gradient reached the LoRA weights"
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()


def test_fp16_on_cpu_is_a_one_line_error(tmp_path: Path, cli) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    recipe = write_recipe(tmp_path / "r.yaml", clm_recipe(tmp_path / "run", fp16=True))
    result = cli("pretrain", recipe)
    assert result.exit_code == 2 and "training.fp16" in result.output
