"""Many processes through accelerate, FSDP/DeepSpeed pass-through, and precision options on the CPU.

The parity test is the contract of data parallelism: 2 processes × batch b take the same optimizer steps,
with the same losses, as 1 process × batch 2b.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from scale_helpers import clm_recipe, log_history, losses, run_llmkit, train_in_process, write_recipe

from llmkit import launch
from llmkit.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent


def test_two_cpu_processes_match_one_process_with_twice_the_batch(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    # No dropout: each process draws its own dropout masks, which is not the parity being tested.
    single = write_recipe(
        tmp_path / "one.yaml", clm_recipe(one, dropout=False, max_steps=6, per_device_train_batch_size=8)
    )
    double = write_recipe(
        tmp_path / "two.yaml", clm_recipe(two, dropout=False, max_steps=6, per_device_train_batch_size=4)
    )
    _, reference = train_in_process(single)

    result = run_llmkit("pretrain", double, "--num-processes", "2", "--cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
    parallel = log_history(two)
    expected, got = losses(reference), losses(parallel)
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-3), f"step {step}: {got[step]} vs {expected[step]}"
    assert got[6] < got[1], "the loss did not fall"
    print("parity (step: 1 process × 8, 2 processes × 4):", {s: (expected[s], got[s]) for s in expected})
    # only the main process prints: one parameter summary, one metrics table
    assert result.stdout.count("trainable parameters:") == 1
    assert result.stdout.count("perplexity") == 1


def test_relaunch_command_uses_accelerate_and_the_cpu_backend() -> None:
    arguments = launch.strip_launch_options(["finetune", "r.yaml", "--num-processes", "4", "--cpu", "a.b=1"])
    assert arguments == ["finetune", "r.yaml", "--cpu", "a.b=1"]
    assert launch.strip_launch_options(["pretrain", "r.yaml", "--num-processes=2"]) == ["pretrain", "r.yaml"]
    command, environment = launch.accelerate_command(2, cpu=True, arguments=arguments)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2" and "--multi_gpu" in command
    assert command[-6:] == ["-m", "llmkit", *arguments]
    assert environment["ACCELERATE_USE_CPU"] == "1"


def test_many_processes_without_gpus_asks_for_cpu(tmp_path: Path, cli) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    recipe = write_recipe(tmp_path / "r.yaml", clm_recipe(tmp_path / "run"))
    result = cli("pretrain", recipe, "--num-processes", "2")
    assert result.exit_code == 2
    assert "--cpu" in result.output and "Traceback" not in result.output


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
