"""The run, top to bottom: recipe → data probe → tokenizer → model → features → Trainer → eval → run folder.

Everything that can be wrong with the user's input is found in `setup()`, before a model is loaded or an
output folder is touched; `train()`, `evaluate()` and `check()` share it.
"""

from __future__ import annotations

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
    from llmkit.models import check_buildable, load_config, max_positions
    from llmkit.tasks import TASKS

    config = load_config(recipe.model)
    task = TASKS[recipe.task].specialize(config, recipe)
    task.check_architecture(config, recipe)
    if recipe.model.from_config is not None:
        check_buildable(task.auto_class(config), config)
    positions = max_positions(config)
    if positions is not None and recipe.data.max_length > positions:
        raise LlmkitError(
            f"recipe field `data.max_length`: {recipe.data.max_length} is more than the model's {positions} positions"
        )
    return task, config


def setup(recipe: Recipe, need_train: bool = True) -> Setup:
    """Probe everything the user gave us (data, columns, model config, tokenizer) without loading weights."""
    from llmkit.data import load_raw, map_columns, require_text
    from llmkit.models import load_tokenizer, train_tokenizer

    task, config = model_side(recipe)
    raw = map_columns(load_raw(recipe.data, need_train), recipe.data.columns, task.roles, task.optional_roles)
    require_text(raw, task.text_roles(), recipe.data.columns)
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
    """The model; a LoRA run folder is its base checkpoint with the trained adapter attached."""
    from llmkit import adapters
    from llmkit.models import adapter_base, build_model

    section = run.recipe.model
    adapter = Path(str(section.name_or_path)) if adapters.is_adapter_folder(section.name_or_path) else None
    if adapter is not None:
        section = section.model_copy(update={"name_or_path": adapter_base(adapter)})
    model = build_model(run.task.auto_class(run.config), section, run.config, run.tokenizer)
    return adapters.attach(model, adapter) if adapter is not None else model


def trainable_model(run: Setup) -> Any:
    """The model to train: LoRA-wrapped when the recipe has `peft:`; says how much of it trains."""
    from transformers import set_seed

    from llmkit import adapters

    # New weights (from config, task heads, LoRA) are drawn from the recipe's seed: same recipe, same start.
    set_seed(run.recipe.training.seed)
    model = load_model(run)
    if run.recipe.peft is not None:
        model = adapters.wrap(model, run.recipe.peft)
    if is_main_process():
        print(adapters.describe_trainable(model), flush=True)
    return model


def is_main_process() -> bool:
    """Rank 0 of a multi-process run (or the only process): the one that prints and writes."""
    import os

    return os.environ.get("RANK", "0") == "0"


def train(recipe: Recipe, overwrite: bool = False, resume: str | bool | None = None) -> dict[str, Any]:
    """Train, evaluate and write the run folder; returns the eval metrics."""
    from llmkit import artifacts
    from llmkit.errors import Interrupted, TrainingDiverged
    from llmkit.trainer import StopOnSignal, build_trainer, divergence_guard, resolve_resume, training_arguments

    output = Path(recipe.training.output_dir)
    artifacts.check_output_dir(output, overwrite, bool(resume))
    checkpoint = resolve_resume(output, resume)
    started = time.time()
    args = training_arguments(recipe)
    run = setup(recipe)
    with args.main_process_first(desc="preprocessing"):
        prepared = run.task.preprocess(recipe, run.raw, run.tokenizer)
    model = trainable_model(run)
    guard, stop = divergence_guard(), StopOnSignal()
    trainer = build_trainer(run.task, recipe, args, model, run.tokenizer, prepared, callbacks=[guard, stop.callback()])
    if overwrite and not resume and trainer.is_world_process_zero():
        artifacts.clear_output_dir(output)
    output.mkdir(parents=True, exist_ok=True)
    stop.install()
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        stop.restore()
    if stop.stopped_at is not None:
        saved = output / f"checkpoint-{stop.stopped_at}"
        raise Interrupted(f"interrupted at step {stop.stopped_at}; checkpoint saved in {saved}")
    if guard.diverged_at is not None:
        raise TrainingDiverged(
            f"training diverged: the loss is not finite at step {guard.diverged_at}; "
            f"lower training.learning_rate (checkpoints before that step are kept in {output})"
        )
    evaluation = run.task.evaluate(trainer, prepared, recipe, run.tokenizer) if prepared.eval is not None else None
    metrics = {**result.metrics, **(evaluation.metrics if evaluation else {})}
    # Every process takes part in the final save: FSDP and DeepSpeed gather the sharded weights collectively.
    artifacts.save_model_atomically(trainer, run.tokenizer, output)
    if trainer.is_world_process_zero():
        trainer.save_state()  # trainer_state.json: the full log history (losses, eval points)
        if recipe.peft is not None:
            from llmkit.adapters import save_base_config

            save_base_config(trainer.model, output)
        write_results(output, recipe, evaluation, metrics)
        artifacts.plot_losses(trainer.state.log_history, output / "loss.png")
        (output / "README.md").write_text(
            artifacts.model_card(recipe, metrics, adapter=recipe.peft is not None, auto_class=run.task.auto_class_name),
            encoding="utf-8",
        )
        artifacts.write_json(output / "run.json", run_facts(recipe, started, trainer, prepared, run.raw))
    return metrics


def write_results(output: Path, recipe: Recipe, evaluation: Evaluation | None, metrics: dict[str, Any]) -> None:
    from llmkit import artifacts

    artifacts.write_recipe(output, recipe)
    artifacts.write_json(output / "metrics.json", artifacts.clean_metrics(metrics))
    if evaluation is not None and evaluation.predictions is not None:
        artifacts.write_predictions(output / "predictions.jsonl", evaluation.predictions)


def run_facts(
    recipe: Recipe, started: float, trainer: Any, prepared: Prepared, raw: DatasetDict | None = None
) -> dict[str, Any]:
    """Versions, device, seed, data fingerprints and timing: what it takes to reproduce or compare a run."""
    import platform
    import subprocess

    import torch
    import transformers

    from llmkit import __version__
    from llmkit.data import fingerprints

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
            ).stdout.strip()
            or None
        )
    except OSError:
        commit = None
    train_log = next((e for e in reversed(trainer.state.log_history) if "train_runtime" in e), {})
    samples_per_second = train_log.get("train_samples_per_second")
    return {
        "llmkit": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "seed": recipe.training.seed,
        "device": str(trainer.args.device),
        "world_size": trainer.args.world_size,
        "data_fingerprints": fingerprints(recipe.data, raw) if raw is not None else {},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": round(time.time() - started, 2),
        "train_runtime": train_log.get("train_runtime"),
        "train_samples_per_second": samples_per_second,
        "tokens_per_second": round(samples_per_second * mean_tokens(prepared.train), 1)
        if samples_per_second and prepared.train is not None
        else None,
        "global_step": trainer.state.global_step,
    }


def mean_tokens(features: Any) -> float:
    """Real (unpadded) input tokens per training example: samples/s × this = tokens/s."""
    from llmkit.tasks.packing import token_count

    return token_count(features) / max(len(features), 1)


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
    from llmkit.artifacts import is_run_folder
    from llmkit.trainer import build_trainer, training_arguments

    folder = checkpoint or Path(recipe.training.output_dir)
    if checkpoint is None and not is_run_folder(folder):
        raise LlmkitError(
            f"recipe field `training.output_dir`: no trained model in {folder} (train first or pass --checkpoint)"
        )
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


def merge_adapter(adapter_dir: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """`llmkit merge`: a LoRA run folder → a plain model folder (merged weights, tokenizer, recipe)."""
    from llmkit import adapters, artifacts
    from llmkit.recipe import load_recipe

    if not adapters.is_adapter_folder(adapter_dir):
        raise LlmkitError(f"{adapter_dir} is not a LoRA run folder (no adapter_config.json)")
    if not (adapter_dir / "recipe.yaml").is_file():
        raise LlmkitError(f"{adapter_dir} has no recipe.yaml (was it written by llmkit finetune?)")
    if out_dir.resolve() == adapter_dir.resolve():
        raise LlmkitError("OUT_DIR must differ from ADAPTER_DIR: merging in place would delete the adapter run")
    artifacts.check_output_dir(out_dir, overwrite, resume=False)
    recipe = recipe_for_checkpoint(load_recipe(adapter_dir / "recipe.yaml"), adapter_dir)
    run = setup_for_inference(recipe)
    merged = adapters.merge(load_model(run))
    staging = out_dir.parent / f".{out_dir.name}.tmp"
    artifacts.clear_output_dir(staging)
    merged.save_pretrained(str(staging))
    run.tokenizer.save_pretrained(str(staging))
    (staging / "recipe.yaml").write_text((adapter_dir / "recipe.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    artifacts.clear_output_dir(out_dir)
    staging.rename(out_dir)
    return out_dir
