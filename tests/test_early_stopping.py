"""`training.early_stopping`: the run stops before max_steps once the eval metric stops improving, says when and
why (console and run.json), ends on the best checkpoint; the key never reaches TrainingArguments, which get
the strategies early stopping needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_recipe import clm_recipe, invoke, one_thread, write_corpus, write_recipe


def overfitting(tmp_path: Path, **early: Any) -> dict[str, Any]:
    """A tiny GPT-2 on 12 training rows at a high rate: the eval loss falls, then rises (measured: best at step
    15, worse at 20 and 25)."""
    content = clm_recipe(
        write_corpus(tmp_path / "corpus.txt"),
        tmp_path / "run",
        max_steps=200,
        eval_steps=5,
        save_steps=5,
        logging_steps=5,
        learning_rate=1e-2,
        warmup_steps=0,
        report_to="none",
    )
    content["data"]["max_train_samples"] = 12
    content["training"]["early_stopping"] = {"patience": 2, "metric": "eval_loss", **early}
    return content


def test_stops_early_keeps_and_loads_the_best_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    with one_thread():
        result = invoke("pretrain", write_recipe(tmp_path / "r.yaml", overfitting(tmp_path)))
    assert result.exit_code == 0, result.output[-3000:]
    run = tmp_path / "run"
    stopped = json.loads((run / "run.json").read_text())["early_stopped"]
    assert stopped["metric"] == "eval_loss" and stopped["patience"] == 2
    assert stopped["best_step"] < stopped["at_step"] < 200
    assert stopped["at_step"] == stopped["best_step"] + 2 * 5  # two evaluations without improvement
    assert f"early stopping at step {stopped['at_step']}" in result.stdout
    print(f"early stopping: {stopped}")

    # the best checkpoint is kept and is the final model; the final eval is the best eval
    best = run / f"checkpoint-{stopped['best_step']}"
    assert stopped["best_checkpoint"] == best.name and best.is_dir()
    final, kept = load_file(run / "model.safetensors"), load_file(best / "model.safetensors")
    assert final.keys() == kept.keys() and all((final[k] == kept[k]).all() for k in final)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(stopped["best"], rel=1e-6)
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    during = dict(evals[:-1])  # the last entry is the final evaluation, of the best model
    assert min(during.values()) == pytest.approx(stopped["best"]) == evals[-1][1]
    assert during[stopped["at_step"]] > stopped["best"]


def test_a_run_without_it_goes_to_max_steps_and_says_nothing(tmp_path: Path) -> None:
    content = overfitting(tmp_path)
    del content["training"]["early_stopping"]
    content["training"].update(max_steps=25, eval_strategy="no")
    with one_thread():
        result = invoke("pretrain", write_recipe(tmp_path / "r.yaml", content))
    assert result.exit_code == 0, result.output[-3000:]
    facts = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "early_stopped" not in facts and facts["global_step"] == 25


def test_arguments_are_made_consistent_and_the_key_is_not_passed_on(tmp_path: Path) -> None:
    from llmkit.recipe import recipe_from_mapping
    from llmkit.trainer import training_arguments

    content = overfitting(tmp_path)
    content["training"].update(eval_strategy="no", save_strategy="no")
    del content["training"]["eval_steps"], content["training"]["save_steps"]
    content["training"]["logging_steps"] = 7
    recipe = recipe_from_mapping(content)
    assert "early_stopping" not in recipe.training.arguments()
    args = training_arguments(recipe)
    assert args.eval_strategy == "steps" and args.save_strategy == "steps"
    assert args.eval_steps == args.save_steps == 7  # evaluation follows logging when it was off
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss"
    assert args.greater_is_better is False

    content["training"]["early_stopping"] = {"patience": 1, "metric": "eval_accuracy"}
    assert training_arguments(recipe_from_mapping(content)).greater_is_better is True


def test_metric_must_be_an_eval_metric(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", overfitting(tmp_path, metric="loss"))
    result = invoke("pretrain", recipe)
    assert result.exit_code == 2 and "training.early_stopping.metric" in result.stderr, result.stderr


def test_a_metric_the_evaluation_does_not_give_is_one_line_exit_2(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", overfitting(tmp_path, metric="eval_accuracy"))
    with one_thread():
        result = invoke("pretrain", recipe)
    assert result.exit_code == 2, result.output[-2000:]
    assert "`eval_accuracy` is not among the metrics" in result.stderr and "eval_loss" in result.stderr
    assert result.stderr.strip().count("\n") == 0
