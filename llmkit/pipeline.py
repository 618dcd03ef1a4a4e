"""The run, top to bottom: recipe → data probe → tokenizer → model → features → Trainer → eval → run folder.

Everything that can be wrong with the user's input is found in `setup()`, before a model is loaded or an
output folder is touched; `train()`, `evaluate()` and `check()` share it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError
from llmkit.recipe import Recipe, recipe_from_mapping

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from llmkit.tasks.base import Evaluation, Prepared, Task


@dataclass
class Setup:
    """What a run needs before its model exists: validated data, tokenizer and config."""

    recipe: Recipe
    task: Task
    raw: DatasetDict
    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase


def model_side(recipe: Recipe) -> tuple[Task, PretrainedConfig]:
    """The task and the model's config, checked against each other (no weights loaded)."""
    from llmkit.models import load_config, max_positions
    from llmkit.tasks import TASKS

    task = TASKS[recipe.task]
    config = load_config(recipe.model)
    task.check_architecture(config, recipe)
    positions = max_positions(config)
    if positions is not None and recipe.data.max_length > positions:
        raise LlmkitError(
            f"recipe field `data.max_length`: {recipe.data.max_length} is more than the model's {positions} positions"
        )
    return task, config


def setup(recipe: Recipe, need_train: bool = True) -> Setup:
    """Probe everything the user gave us (data, columns, model config, tokenizer) without loading weights."""
    from llmkit.data import load_raw, map_columns
    from llmkit.models import load_tokenizer, train_tokenizer

    task, config = model_side(recipe)
    raw = map_columns(load_raw(recipe.data), recipe.data.columns, task.roles, task.optional_roles)
    if not need_train and "eval" not in raw:
        raise LlmkitError("the recipe has no eval data: set `data.eval` or `data.validation_split`")
    if recipe.tokenizer.train is not None:
        texts = (row[role] for row in raw["train"] for role in task.text_roles() if isinstance(row.get(role), str))
        tokenizer = train_tokenizer(recipe.tokenizer.train, texts)
    else:
        tokenizer = load_tokenizer(recipe.tokenizer, recipe.model)
    for key, value in task.config_overrides(recipe, raw).items():
        setattr(config, key, value)
    return Setup(recipe, task, raw, config, tokenizer)


def setup_for_inference(recipe: Recipe) -> Setup:
    """Model side only: a trained run folder already holds its tokenizer and label maps."""
    from datasets import DatasetDict

    from llmkit.models import load_tokenizer

    task, config = model_side(recipe)
    return Setup(recipe, task, DatasetDict(), config, load_tokenizer(recipe.tokenizer, recipe.model))


def load_model(run: Setup) -> Any:
    from llmkit.models import build_model

    return build_model(run.task.auto_class(run.config), run.recipe.model, run.config, run.tokenizer)


def train(recipe: Recipe, overwrite: bool = False, resume: str | bool | None = None) -> dict[str, Any]:
    """Train, evaluate and write the run folder; returns the eval metrics."""
    from llmkit import artifacts
    from llmkit.errors import TrainingDiverged
    from llmkit.trainer import build_trainer, divergence_guard, training_arguments

    output = Path(recipe.training.output_dir)
    artifacts.check_output_dir(output, overwrite, bool(resume))
    started = time.time()
    run = setup(recipe)
    args = training_arguments(recipe)
    with args.main_process_first(desc="preprocessing"):
        prepared = run.task.preprocess(recipe, run.raw, run.tokenizer)
    model = load_model(run)
    guard = divergence_guard()
    trainer = build_trainer(run.task, recipe, args, model, run.tokenizer, prepared, callbacks=[guard])
    if overwrite and not resume and trainer.is_world_process_zero():
        artifacts.clear_output_dir(output)
    output.mkdir(parents=True, exist_ok=True)
    result = trainer.train(resume_from_checkpoint=resume or None)
    if guard.diverged_at is not None:
        raise TrainingDiverged(
            f"training diverged: the loss is not finite at step {guard.diverged_at}; "
            f"lower training.learning_rate (checkpoints before that step are kept in {output})"
        )
    evaluation = run.task.evaluate(trainer, prepared, recipe, run.tokenizer) if prepared.eval is not None else None
    metrics = {**result.metrics, **(evaluation.metrics if evaluation else {})}
    if trainer.is_world_process_zero():
        artifacts.save_model_atomically(trainer, run.tokenizer, output)
        write_results(output, recipe, evaluation, metrics)
        artifacts.plot_losses(trainer.state.log_history, output / "loss.png")
        (output / "README.md").write_text(
            artifacts.model_card(recipe, metrics, adapter=recipe.peft is not None), encoding="utf-8"
        )
        artifacts.write_json(output / "run.json", run_facts(recipe, started, trainer, prepared))
    return metrics


def write_results(output: Path, recipe: Recipe, evaluation: Evaluation | None, metrics: dict[str, Any]) -> None:
    from llmkit import artifacts

    artifacts.write_recipe(output, recipe)
    artifacts.write_json(output / "metrics.json", artifacts.clean_metrics(metrics))
    if evaluation is not None and evaluation.predictions is not None:
        artifacts.write_predictions(output / "predictions.jsonl", evaluation.predictions)


def run_facts(recipe: Recipe, started: float, trainer: Any, prepared: Prepared) -> dict[str, Any]:
    """Versions, device, seed, data fingerprints and timing: what it takes to reproduce or compare a run."""
    import platform
    import subprocess

    import torch
    import transformers

    from llmkit import __version__

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip() or None
    except OSError:
        commit = None
    wall = time.time() - started
    metrics = trainer.state.log_history[-1] if trainer.state.log_history else {}
    tokens = trainer.state.num_input_tokens_seen or None
    return {
        "llmkit": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "seed": recipe.training.seed,
        "device": str(trainer.args.device),
        "world_size": trainer.args.world_size,
        "data_fingerprints": {
            name: getattr(dataset, "_fingerprint", None)
            for name, dataset in (("train", prepared.train), ("eval", prepared.eval))
            if dataset is not None
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": round(wall, 2),
        "train_runtime": metrics.get("train_runtime"),
        "train_samples_per_second": metrics.get("train_samples_per_second"),
        "tokens_per_second": round(tokens / metrics["train_runtime"], 1)
        if tokens and metrics.get("train_runtime")
        else None,
        "global_step": trainer.state.global_step,
    }


def recipe_for_checkpoint(recipe: Recipe, checkpoint: Path) -> Recipe:
    """The same recipe, but loading model and tokenizer from a trained run folder."""
    from llmkit import artifacts

    if not artifacts.is_run_folder(checkpoint):
        raise LlmkitError(f"--checkpoint {checkpoint} is not a run folder (no config.json or adapter_config.json)")
    content = recipe.model_dump(mode="json")
    content["model"] = {**content["model"], "name_or_path": str(checkpoint), "from_config": None}
    content["tokenizer"] = {"name_or_path": str(checkpoint), "train": None}
    return recipe_from_mapping(content)


def evaluate(recipe: Recipe, checkpoint: Path | None = None) -> tuple[dict[str, Any], Path]:
    """Evaluate a trained run folder on the recipe's eval data; writes metrics.json there."""
    from llmkit.trainer import build_trainer, training_arguments

    folder = checkpoint or Path(recipe.training.output_dir)
    recipe = recipe_for_checkpoint(recipe, folder)
    run = setup(recipe, need_train=False)
    args = training_arguments(recipe, output_dir=str(folder), report_to="none")
    prepared = _prepare_eval(run)
    model = load_model(run)
    trainer = build_trainer(run.task, recipe, args, model, run.tokenizer, prepared)
    evaluation = run.task.evaluate(trainer, prepared, recipe, run.tokenizer)
    if trainer.is_world_process_zero():
        from llmkit import artifacts

        artifacts.write_json(folder / "metrics.json", artifacts.clean_metrics(evaluation.metrics))
        if evaluation.predictions is not None:
            artifacts.write_predictions(folder / "predictions.jsonl", evaluation.predictions)
    return evaluation.metrics, folder


def _prepare_eval(run: Setup) -> Prepared:
    """Preprocess the eval split alone (tasks accept a DatasetDict without `train`)."""
    from datasets import DatasetDict

    return run.task.preprocess(run.recipe, DatasetDict({"eval": run.raw["eval"]}), run.tokenizer)


def read_metrics(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
