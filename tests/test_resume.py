"""Exact resume: a run killed with SIGKILL, or stopped with Ctrl-C, and resumed ends like a run never interrupted.

Dropout is on, so the resumed run only matches when the RNG state is restored too; the data order and the
learning-rate schedule are checked through the per-step training losses after the checkpoint.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from llmkit import pipeline
from llmkit.errors import LlmkitError
from llmkit.recipe import load_recipe
from llmkit.trainer import latest_checkpoint
from tests.scale_helpers import clm_recipe, llmkit_command, losses, subprocess_env, train_in_process, write_recipe

STEPS = 24

pytestmark = pytest.mark.integration  # real processes killed and resumed


def interrupt_after_first_checkpoint(recipe_path: Path, output: Path, sig: int, log: Path) -> subprocess.Popen:
    """Start `llmkit pretrain` in a subprocess; send `sig` as soon as its first checkpoint is complete."""
    with log.open("w") as handle:
        process = subprocess.Popen(
            llmkit_command("pretrain", recipe_path), env=subprocess_env(), stdout=handle, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 240
        while process.poll() is None and time.time() < deadline:
            if latest_checkpoint(output) is not None:
                process.send_signal(sig)
                break
            time.sleep(0.02)
        process.wait(timeout=120)
    return process


def assert_same_run(resumed: tuple[dict, list[dict]], reference: tuple[dict, list[dict]], after: int) -> None:
    (metrics, history), (ref_metrics, ref_history) = resumed, reference
    difference = abs(metrics["eval_loss"] - ref_metrics["eval_loss"]) / ref_metrics["eval_loss"]
    print(
        f"resumed from step {after}: eval_loss {metrics['eval_loss']:.6f} vs {ref_metrics['eval_loss']:.6f}, "
        f"relative difference {difference:.2e}"
    )
    assert difference <= 1e-4
    steps = {s: v for s, v in losses(history).items() if s > after}
    assert sorted(steps) == list(range(after + 1, STEPS + 1)), "the resumed run did not continue from the checkpoint"
    reference_steps = losses(ref_history)
    for step, loss in steps.items():
        assert loss == pytest.approx(reference_steps[step], rel=1e-4), f"loss differs at step {step}"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[dict, list[dict]]]:
    """The uninterrupted reference run: its folder (also the LoRA tests' base model) and its results."""
    output = tmp_path_factory.mktemp("resume") / "reference"
    recipe_path = write_recipe(output.parent / "full.yaml", clm_recipe(output, max_steps=STEPS))
    return output, train_in_process(recipe_path)


def test_sigkill_then_resume_matches_uninterrupted_full_run(full_run, tmp_path: Path) -> None:
    _, reference = full_run
    output = tmp_path / "killed"
    killed = write_recipe(tmp_path / "killed.yaml", clm_recipe(output, max_steps=STEPS))
    process = interrupt_after_first_checkpoint(killed, output, signal.SIGKILL, tmp_path / "log.txt")
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (output / "metrics.json").exists()
    checkpoint = latest_checkpoint(output)
    step = int(checkpoint.name.split("-")[1])
    assert 0 < step < STEPS
    assert_same_run(train_in_process(killed, resume=True), reference, after=step)


def test_sigkill_then_resume_matches_uninterrupted_lora_run(full_run, tmp_path: Path) -> None:
    base, reference = full_run

    def lora(output: Path) -> dict[str, Any]:
        content = clm_recipe(output, max_steps=STEPS, learning_rate=1.0e-2)
        content["model"] = {"name_or_path": str(base)}
        del content["tokenizer"]
        content["peft"] = {"r": 4, "alpha": 8, "dropout": 0.1}
        return content

    lora_reference = train_in_process(write_recipe(tmp_path / "ref.yaml", lora(tmp_path / "reference")))
    assert (tmp_path / "reference" / "adapter_model.safetensors").is_file()
    output = tmp_path / "killed"
    killed = write_recipe(tmp_path / "killed.yaml", lora(output))
    process = interrupt_after_first_checkpoint(killed, output, signal.SIGKILL, tmp_path / "log.txt")
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    step = int(latest_checkpoint(output).name.split("-")[1])
    assert_same_run(train_in_process(killed, resume=True), lora_reference, after=step)
    assert lora_reference[0]["eval_loss"] != pytest.approx(reference[0]["eval_loss"], rel=1e-4), "LoRA did not train"


def test_ctrl_c_saves_a_checkpoint_says_how_to_resume_and_resumes_exactly(full_run, tmp_path: Path) -> None:
    _, reference = full_run
    output = tmp_path / "stopped"
    recipe_path = write_recipe(tmp_path / "stopped.yaml", clm_recipe(output, max_steps=STEPS, save_steps=1000))
    # save_steps=1000: the only checkpoint is the one Ctrl-C makes; wait for its first logged step.
    log = tmp_path / "log.txt"
    with log.open("w") as handle:
        process = subprocess.Popen(
            llmkit_command("pretrain", recipe_path), env=subprocess_env(), stdout=handle, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 240
        while process.poll() is None and time.time() < deadline and "  loss " not in log.read_text():
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    text = log.read_text()
    assert process.returncode == 130, text[-2000:]
    assert "checkpoint saved in" in text and "--resume latest" in text, text[-2000:]
    assert "Traceback" not in text
    checkpoint = latest_checkpoint(output)
    assert checkpoint is not None and not (output / "metrics.json").exists()
    step = int(checkpoint.name.split("-")[1])
    assert step < STEPS
    assert_same_run(train_in_process(recipe_path, resume=True), reference, after=step)


def test_resume_without_a_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    recipe_path = write_recipe(tmp_path / "r.yaml", clm_recipe(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmkitError, match="no complete checkpoint"):
        pipeline.train(load_recipe(recipe_path), resume=True)
    with pytest.raises(LlmkitError, match="not a checkpoint folder"):
        pipeline.train(load_recipe(recipe_path), resume=str(tmp_path / "nowhere"))
