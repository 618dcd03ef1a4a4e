"""CLI basics: help is fast and light, shipped recipes are listed, user errors exit 2 on one line."""

from __future__ import annotations

import subprocess
import sys

#: what `llmkit --help` must not import: rich (its help formatter doubled the start-up time), the ML stack,
#: and the optional extras (export, tune, tracking)
HEAVY = ("rich", "torch", "transformers", "datasets", "accelerate", "peft", "onnx", "onnxruntime", "optuna")
HEAVY += ("mlflow", "wandb")


def test_help_is_plain_and_imports_no_heavy_library() -> None:
    """In a fresh interpreter, as a terminal runs it: the help lists every command and loads none of HEAVY."""
    code = (
        "import sys\nfrom llmkit.cli import app\n"
        "try:\n    app(['--help'], prog_name='llmkit')\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Commands:" in done.stdout
    for command in ("pretrain", "finetune", "eval", "check", "predict", "export", "tune"):
        assert f"  {command} " in done.stdout, command
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_every_command_help_has_an_example(cli) -> None:
    for command in ("pretrain", "finetune", "eval", "check", "recipes", "predict"):
        result = cli(command, "--help")
        assert result.exit_code == 0
        assert "Example: llmkit" in result.output, command


def test_recipes_lists_and_prints(cli) -> None:
    listing = cli("recipes")
    assert listing.exit_code == 0
    assert "ci/tiny-gpt2-clm" in listing.output
    shown = cli("recipes", "ci/tiny-gpt2-clm")
    assert shown.exit_code == 0 and "task: clm" in shown.output


def test_missing_recipe_is_one_line_exit_2(cli, tmp_path) -> None:
    result = cli("pretrain", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "recipe file not found" in result.stderr


def test_pretrain_refuses_a_finetuning_task(cli, tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "task: classification\nmodel: {name_or_path: x}\ndata: {train: t.csv}\ntraining: {output_dir: o}\n"
    )
    result = cli("pretrain", str(recipe))
    assert result.exit_code == 2
    assert "`classification` is not for this command" in result.stderr
