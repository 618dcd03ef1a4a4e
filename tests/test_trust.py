"""Nothing a user has is lost, and no run reports what did not happen.

Real files and real runs: `--overwrite` refuses every folder that is not an llmkit run folder or that holds
something the user gave the run, and leaves it byte for byte as it was; a replacing run that fails, diverges
or is interrupted leaves the previous run intact; one run per folder; `eval` keeps the training metrics;
`--resume` refuses finished runs and incomplete checkpoints; damaged weights are one-line errors.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llmkit.run_folder import LOCK, MARKER
from tests.tiny_recipe import (
    clm_recipe,
    invoke,
    llmkit_command,
    snapshot,
    subprocess_env,
    write_corpus,
    write_recipe,
)

LLMKIT_MARKER = '{"written_by": "llmkit", "kind": "run"}\n'  # what a real run folder holds


def tiny(data: Path, output: Path | str, **training: Any) -> dict[str, Any]:
    settings = {"max_steps": 4, "save_steps": 2, "eval_strategy": "no", "logging_steps": 1, **training}
    content = clm_recipe(data, output, **settings)
    content["generation"] = {"max_new_tokens": 8}
    return content


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run: the earlier good work that later commands must never destroy."""
    root = tmp_path_factory.mktemp("previous")
    data = write_corpus(root / "data" / "train.txt")
    recipe = write_recipe(root / "recipe.yaml", tiny(data, root / "run"))
    result = invoke("pretrain", recipe)
    assert result.exit_code == 0, result.stderr[-2000:]
    return root / "run"


@pytest.fixture
def workspace(tmp_path: Path, previous: Path) -> Path:
    """A user's folder: data, a copy of the previous run, and a recipe."""
    data = write_corpus(tmp_path / "data" / "train.txt")
    shutil.copytree(previous, tmp_path / "run")
    write_recipe(tmp_path / "recipe.yaml", tiny(data, tmp_path / "run"))
    return tmp_path


def assert_refused(result: Any, *needles: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def recipe_with(workspace: Path, name: str = "r.yaml", **changes: Any) -> Path:
    content = tiny(workspace / "data" / "train.txt", workspace / "run")
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        content.setdefault(section, {})[key] = value
    return write_recipe(workspace / name, content)


# ----------------------------------------------------------------------------- --overwrite refuses


def test_overwrite_refuses_the_working_folder_even_when_marked(workspace: Path, monkeypatch) -> None:
    (workspace / MARKER).write_text(LLMKIT_MARKER)  # even a folder that looks like a run
    recipe = recipe_with(workspace, training__output_dir=".")
    before = snapshot(workspace)
    monkeypatch.chdir(workspace)
    assert_refused(invoke("pretrain", recipe, "--overwrite"), "the working folder")
    assert snapshot(workspace) == before


def test_overwrite_refuses_an_ancestor_of_the_working_folder(workspace: Path, monkeypatch) -> None:
    (workspace / MARKER).write_text(LLMKIT_MARKER)
    recipe = recipe_with(workspace, training__output_dir=str(workspace))
    before = snapshot(workspace)
    monkeypatch.chdir(workspace / "data")
    assert_refused(invoke("pretrain", recipe, "--overwrite"), "ancestor of the working folder")
    assert snapshot(workspace) == before


@pytest.mark.parametrize("what", ["data", "model", "tokenizer", "recipe"])
def test_overwrite_refuses_a_folder_holding_an_input(workspace: Path, what: str) -> None:
    """Even an llmkit run folder is refused when the run reads from it (a continued run into its base)."""
    run = workspace / "run"
    (workspace / "data" / MARKER).write_text(LLMKIT_MARKER)
    content = tiny(workspace / "data" / "train.txt", run)
    if what == "data":
        content["training"]["output_dir"] = str(workspace / "data")
    elif what == "model":
        content["model"] = {"name_or_path": str(run)}
        content["tokenizer"] = {}
    elif what == "tokenizer":
        content["tokenizer"] = {"name_or_path": str(run)}
    recipe = write_recipe((run if what == "recipe" else workspace) / "r.yaml", content)
    before = snapshot(workspace)
    needle = {"data": "data.train", "model": "model.name_or_path", "tokenizer": "tokenizer.name_or_path"}
    assert_refused(invoke("pretrain", recipe, "--overwrite"), "--overwrite refuses", needle.get(what, "the recipe"))
    assert snapshot(workspace) == before


def test_overwrite_refuses_a_folder_llmkit_did_not_write(workspace: Path) -> None:
    mine = workspace / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("two years of work")
    recipe = recipe_with(workspace, training__output_dir=str(mine))
    before = snapshot(workspace)
    assert_refused(invoke("pretrain", recipe, "--overwrite"), "llmkit did not write it", str(mine))
    assert snapshot(workspace) == before


def test_overwrite_refuses_home_and_root(workspace: Path, monkeypatch) -> None:
    home = workspace / "home"
    home.mkdir()
    (home / MARKER).write_text(LLMKIT_MARKER)
    (home / ".bashrc").write_text("export PATH\n")
    monkeypatch.setenv("HOME", str(home))
    at_home, at_root = (
        recipe_with(workspace, "home.yaml", training__output_dir="~"),
        recipe_with(workspace, "root.yaml", training__output_dir="/"),
    )
    before = snapshot(workspace)
    assert_refused(invoke("pretrain", at_home, "--overwrite"), "home folder")
    assert_refused(invoke("pretrain", at_root, "--overwrite"), "refuses /")
    assert snapshot(workspace) == before


# ----------------------------------------------------------------------------- replacing runs


def test_a_replacing_run_that_diverges_leaves_the_previous_run_intact(workspace: Path) -> None:
    recipe = recipe_with(
        workspace, training__optim="sgd", training__max_grad_norm=0, training__learning_rate=1000, training__max_steps=8
    )
    before = snapshot(workspace / "run")
    result = invoke("pretrain", recipe, "--overwrite")
    assert result.exit_code == 1, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "training diverged" in line and "previous run" in line and "untouched" in line, line
    assert snapshot(workspace / "run") == before
    assert sorted(p.name for p in workspace.iterdir()) == ["data", "r.yaml", "recipe.yaml", "run"]


def test_an_interrupted_replacing_run_leaves_the_previous_run_and_says_where_the_new_one_is(
    workspace: Path, monkeypatch
) -> None:
    from llmkit.trainer import StopOnSignal

    recipe = recipe_with(workspace)
    before = snapshot(workspace / "run")
    monkeypatch.setattr(StopOnSignal, "requested", lambda self, args: True)  # Ctrl-C during step 1
    result = invoke("pretrain", recipe, "--overwrite")
    assert result.exit_code == 130, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("stopped: interrupted at step 1") and "untouched" in line, line
    assert "--resume" not in line  # the checkpoint waits in the staging folder, not in the run folder
    assert snapshot(workspace / "run") == before
    staging = workspace / ".run.llmkit-staging"
    assert (staging / "checkpoint-1" / "trainer_state.json").is_file()

    monkeypatch.undo()
    result = invoke("pretrain", recipe, "--overwrite")  # the next replacing run clears it and succeeds
    assert result.exit_code == 0, result.stderr[-2000:]
    assert not staging.exists()


def test_a_replacing_run_that_succeeds_replaces_the_previous_run_whole(workspace: Path) -> None:
    old_weights = (workspace / "run" / "model.safetensors").read_bytes()
    result = invoke("pretrain", recipe_with(workspace), "--overwrite", "training.seed=99")
    assert result.exit_code == 0, result.stderr[-2000:]
    run = workspace / "run"
    assert (run / "model.safetensors").read_bytes() != old_weights
    assert json.loads((run / MARKER).read_text())["written_by"] == "llmkit"
    assert not (run / LOCK).exists()
    assert sorted(p.name for p in workspace.iterdir()) == ["data", "r.yaml", "recipe.yaml", "run"]
    assert "seed: 99" in (run / "recipe.yaml").read_text()


def test_paths_expand_home_once_for_every_writer(workspace: Path, monkeypatch) -> None:
    home = workspace / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RUNS", "runs")
    monkeypatch.chdir(workspace)
    result = invoke("pretrain", recipe_with(workspace, training__output_dir="~/$RUNS/tilde"))
    assert result.exit_code == 0, result.stderr[-2000:]
    run = home / "runs" / "tilde"
    assert (run / "model.safetensors").is_file() and (run / "checkpoint-4").is_dir() and (run / "runs").is_dir()
    assert not (workspace / "~").exists() and not list(workspace.glob("*$RUNS*"))


# ----------------------------------------------------------------------------- one run per folder


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding the folder's lock (as a running llmkit would)."""
    code = (
        "import fcntl, os, sys, time\n"
        f"handle = open({str(folder / LOCK)!r}, 'a+')\n"
        "fcntl.flock(handle.fileno(), fcntl.LOCK_EX)\n"
        "handle.write(str(os.getpid())); handle.flush()\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "locked"
    return process


def test_a_second_run_into_a_locked_folder_is_refused_and_a_dead_lock_taken_over(workspace: Path) -> None:
    recipe = recipe_with(workspace)
    holder = hold_lock(workspace / "run")
    try:
        before = snapshot(workspace / "run")
        for args in (["--overwrite"], ["--resume", "latest"], []):
            line = assert_refused(invoke("pretrain", recipe, *args), "in use by another llmkit run")
            assert f"pid {holder.pid}" in line
        assert snapshot(workspace / "run") == before
    finally:
        holder.kill()
        holder.wait()
    result = invoke("pretrain", recipe, "--overwrite")  # the lock file is left, its owner gone
    assert result.exit_code == 0, result.stderr[-2000:]
    assert f"took over the lock on {workspace / 'run'} left by pid {holder.pid}" in result.stderr


# ----------------------------------------------------------------------------- eval and resume


def test_eval_writes_its_own_metrics_and_keeps_the_training_ones(workspace: Path) -> None:
    run = workspace / "run"
    training_metrics = (run / "metrics.json").read_bytes()
    result = invoke("eval", recipe_with(workspace))
    assert result.exit_code == 0, result.stderr[-2000:]
    written = run / "eval" / "heldout-0.1" / "metrics.json"
    assert f"metrics written to {written}" in result.stdout
    assert "eval_loss" in json.loads(written.read_text())
    assert (run / "metrics.json").read_bytes() == training_metrics


def test_resume_of_a_finished_run_is_refused(workspace: Path) -> None:
    before = snapshot(workspace / "run")
    assert_refused(invoke("pretrain", recipe_with(workspace), "--resume", "latest"), "already finished at step 4")
    assert snapshot(workspace / "run") == before


@pytest.mark.parametrize("damage", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "model.safetensors"])
def test_resume_from_an_incomplete_checkpoint_names_the_file(workspace: Path, damage: str) -> None:
    checkpoint = workspace / "run" / "checkpoint-2"
    if damage == "model.safetensors":
        weights = checkpoint / damage
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        (checkpoint / damage).unlink()
    before = snapshot(workspace / "run")
    assert_refused(invoke("pretrain", recipe_with(workspace), "--resume", str(checkpoint)), damage)
    assert snapshot(workspace / "run") == before


@pytest.mark.parametrize("command", ["predict", "eval", "resume"])
def test_truncated_weights_in_a_run_folder_are_one_line_errors(workspace: Path, command: str) -> None:
    run = workspace / "run"
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    if command == "resume":  # the checkpoint's own copy, damaged the same way
        weights = run / "checkpoint-2" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    argv = {
        "predict": ["predict", run, "--text", "the cat"],
        "eval": ["eval", recipe_with(workspace)],
        "resume": ["pretrain", recipe_with(workspace), "--resume", run / "checkpoint-2"],
    }[command]
    before = snapshot(workspace)
    assert_refused(invoke(*argv), "model.safetensors", "truncated")
    assert snapshot(workspace) == before


# ----------------------------------------------------------------------------- predict, generation


def test_a_prompt_longer_than_the_model_is_cut_from_the_left_and_said(workspace: Path) -> None:
    result = invoke("predict", workspace / "run", "--text", "the cat sees the ball " * 40)
    assert result.exit_code == 0, result.stderr[-2000:]
    assert "cut from the left" in result.stderr and "64 positions" in result.stderr
    assert "continuation" in json.loads(result.stdout.strip().splitlines()[-1])


def test_check_says_float_labels_mean_regression(tmp_path: Path) -> None:
    rows = [{"text": f"row {i} reads fine", "label": i / 10} for i in range(20)]
    data = tmp_path / "scores.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    content = tiny(data, tmp_path / "out")
    content["task"] = "classification"
    content["data"]["max_length"] = 16
    result = invoke("check", write_recipe(tmp_path / "r.yaml", content))
    assert result.exit_code == 0, result.stderr[-2000:]
    assert "regression" in result.stdout


# ----------------------------------------------------------------------------- merge


@pytest.fixture
def lora_run(workspace: Path) -> Path:
    content = tiny(workspace / "data" / "train.txt", workspace / "lora", max_steps=2)
    content["model"] = {"name_or_path": str(workspace / "run")}
    content["tokenizer"] = {}
    content["peft"] = {"r": 2}
    result = invoke("finetune", write_recipe(workspace / "lora.yaml", content))
    assert result.exit_code == 0, result.stderr[-2000:]
    return workspace / "lora"


def test_merge_refuses_the_base_model_and_foreign_folders_and_replaces_its_own(workspace: Path, lora_run: Path) -> None:
    (workspace / "notes").mkdir()
    (workspace / "notes" / "todo.txt").write_text("mine")
    before = snapshot(workspace)
    assert_refused(invoke("merge", lora_run, workspace / "run", "--overwrite"), "holds the base model")
    assert_refused(invoke("merge", lora_run, workspace / "data", "--overwrite"), "holds data.train")
    assert_refused(invoke("merge", lora_run, workspace / "notes", "--overwrite"), "llmkit did not write it")
    assert snapshot(workspace) == before
    merged = workspace / "merged"
    for _ in range(2):  # the second replaces the first (an llmkit folder of kind "merge")
        result = invoke("merge", lora_run, merged, "--overwrite")
        assert result.exit_code == 0, result.stderr[-2000:]
    assert json.loads((merged / MARKER).read_text())["kind"] == "merge"
    assert (merged / "model.safetensors").is_file() and not (workspace / ".merged.llmkit-staging").exists()
    adapter = lora_run / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:100])
    assert_refused(invoke("merge", lora_run, workspace / "merged2"), "adapter_model.safetensors", "truncated")
    assert not (workspace / "merged2").exists()


# ----------------------------------------------------------------------------- signals


@pytest.mark.integration
def test_sigterm_stops_training_with_one_line_exit_143_and_a_checkpoint(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "train.txt")
    output = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", tiny(data, output, max_steps=400, save_steps=1000))
    log = tmp_path / "log.txt"
    with log.open("w") as handle:
        process = subprocess.Popen(
            llmkit_command("pretrain", recipe), env=subprocess_env(), stdout=handle, stderr=handle
        )
        deadline = time.time() + 240
        while process.poll() is None and time.time() < deadline and "  loss " not in log.read_text():
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    text = log.read_text()
    assert process.returncode == 143, text[-2000:]
    stopped = [line for line in text.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and "checkpoint saved in" in stopped[0], text[-2000:]
    assert "Traceback" not in text
    assert list(output.glob("checkpoint-*/trainer_state.json"))


def test_the_same_wordpiece_recipe_and_seed_give_identical_tokenizer_and_weights(tmp_path: Path) -> None:
    """The BERT classification CI recipe trains its own WordPiece tokenizer: twice, byte for byte the same."""
    import hashlib

    digests = []
    for name in ("first", "second"):
        output = tmp_path / name
        result = invoke(
            "finetune", "ci/tiny-bert-classification", f"training.output_dir={output}", "training.max_steps=6"
        )
        assert result.exit_code == 0, result.stderr[-2000:]
        digests.append(
            {f: hashlib.sha256((output / f).read_bytes()).hexdigest() for f in ("tokenizer.json", "model.safetensors")}
        )
    assert digests[0] == digests[1]


# ----------------------------------------------------------------------------- found by an outside tester


@pytest.mark.parametrize("args", [[], ["--overwrite"]])
def test_a_path_through_a_missing_folder_and_dotdot_is_the_folder_itself(workspace: Path, args: list[str]) -> None:
    mine = workspace / "userdir"
    mine.mkdir()
    (mine / "config.json").write_text("mine")
    recipe = recipe_with(workspace, training__output_dir=str(mine / "nx" / ".."))
    before = snapshot(workspace)
    assert_refused(invoke("pretrain", recipe, *args), str(mine))
    assert snapshot(workspace) == before and not (mine / "nx").exists()


@pytest.mark.parametrize("marker", ["", "garbage{", '{"written_by": "llmkit", "kind": "merge"}'])
def test_a_marker_llmkit_did_not_write_for_a_run_does_not_count(workspace: Path, marker: str) -> None:
    mine = workspace / "mine"
    mine.mkdir()
    (mine / MARKER).write_text(marker)
    (mine / "thesis.tex").write_text("two years")
    recipe = recipe_with(workspace, training__output_dir=str(mine))
    before = snapshot(workspace)
    assert_refused(invoke("pretrain", recipe, "--overwrite"), "refuses")
    assert snapshot(workspace) == before


def test_llmkit_side_folders_dangling_links_and_unset_variables_are_refused(workspace: Path) -> None:
    (workspace / "dangling").symlink_to(workspace / "nowhere" / "deep")
    cases = {
        str(workspace / ".run.llmkit-staging"): "keeps beside a run",
        str(workspace / "dangling"): "symbolic link to nothing",
        "$LLMKIT_TEST_NOPE/run": "LLMKIT_TEST_NOPE",
    }
    for index, (output, needle) in enumerate(cases.items()):
        recipe = recipe_with(workspace, f"r{index}.yaml", training__output_dir=output)
        before = snapshot(workspace)
        assert_refused(invoke("pretrain", recipe, "--overwrite"), needle)
        assert snapshot(workspace) == before


def test_a_signal_after_the_last_step_stops_before_the_swap(workspace: Path, monkeypatch) -> None:
    from llmkit.trainer import StopOnSignal

    def signalled(self: StopOnSignal) -> None:
        self.signal = signal.SIGTERM  # arrived too late for the per-step check

    monkeypatch.setattr(StopOnSignal, "install", signalled)
    monkeypatch.setattr(StopOnSignal, "requested", lambda self, args: False)  # after the last step's check
    before = snapshot(workspace / "run")
    result = invoke("pretrain", recipe_with(workspace), "--overwrite")
    assert result.exit_code == 143, result.stderr[-2000:]
    assert "stopped after training" in result.stderr and "untouched" in result.stderr
    assert snapshot(workspace / "run") == before


def test_a_truncated_optimizer_state_is_refused_by_resume(workspace: Path) -> None:
    checkpoint = workspace / "run" / "checkpoint-2"
    state = checkpoint / "optimizer.pt"
    state.write_bytes(state.read_bytes()[:1000])
    before = snapshot(workspace / "run")
    assert_refused(invoke("pretrain", recipe_with(workspace), "--resume", str(checkpoint)), "optimizer.pt", "damaged")
    assert snapshot(workspace / "run") == before


def test_merge_refuses_a_folder_inside_the_adapter_run(workspace: Path, lora_run: Path) -> None:
    assert_refused(invoke("merge", lora_run, lora_run / "sub"), "inside the adapter run")
    assert not (lora_run / "sub").exists()


def test_predict_refuses_an_empty_text_in_a_file(workspace: Path) -> None:
    inputs = workspace / "in.jsonl"
    inputs.write_text('{"text": "the cat"}\n{"text": ""}\n')
    assert_refused(invoke("predict", workspace / "run", "--file", inputs), "input 2 has an empty `text`")
