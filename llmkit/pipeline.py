"""The run, top to bottom: recipe → data probe → tokenizer → model → features → Trainer → eval → run folder.

Everything that can be wrong with the user's input is found in `setup()`, before a model is loaded or an
output folder is touched; `train()`, `evaluate()` and `check()` share it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError
from llmkit.recipe import Recipe, recipe_from_mapping

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from llmkit.run_folder import RunFolder
    from llmkit.tasks.base import Evaluation, Prepared, Task


DEFAULT_MAX_LENGTH = 512


@dataclass
class Setup:
    """What a run needs before its model exists: validated data, tokenizer and config."""

    recipe: Recipe
    task: Task
    raw: DatasetDict
    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase


def model_side(recipe: Recipe) -> tuple[Task, PretrainedConfig, Recipe]:
    """The task and the model's config, checked against each other (no weights loaded), and the recipe with
    `data.max_length` resolved: unset, it is the model's own limit (at most 512); set, it must fit the model."""
    from llmkit.console import quiet_libraries
    from llmkit.models import check_buildable, load_config, max_positions
    from llmkit.tasks import TASKS

    quiet_libraries()
    config = load_config(recipe.model)
    positions = max_positions(config)
    if recipe.data.max_length is None:
        default = min(positions or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)
        recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"max_length": default})})
    elif positions is not None and recipe.data.max_length > positions:
        raise LlmkitError(
            f"recipe field `data.max_length`: {recipe.data.max_length} is more than the model's {positions} positions"
        )
    task = TASKS[recipe.task].specialize(config, recipe)
    task.check_architecture(config, recipe)
    if recipe.model.from_config is not None:
        check_buildable(task.auto_class(), config)
    return task, config, recipe


def setup(recipe: Recipe, need_train: bool = True) -> Setup:
    """Probe everything the user gave us (data, columns, model config, tokenizer) without loading weights."""
    from llmkit.data import check_roles, load_raw, map_columns
    from llmkit.models import load_tokenizer, train_tokenizer

    task, config, recipe = model_side(recipe)
    loaded = load_raw(recipe.data, need_train, task.read_file)
    raw = map_columns(loaded, recipe.data.columns, task.roles, task.optional_roles)
    kinds = {role: task.kind(role) for role in (*task.roles, *task.optional_roles)}
    check_roles(raw, kinds, recipe.data.columns)
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

    task, config, recipe = model_side(recipe)
    return Setup(recipe, task, DatasetDict(), config, load_tokenizer(recipe.tokenizer, recipe.model))


def load_model(run: Setup) -> Any:
    """The model; a LoRA run folder is its base checkpoint with the trained adapter attached."""
    from llmkit import adapters
    from llmkit.models import adapter_base, build_model

    section = run.recipe.model
    adapter = Path(str(section.name_or_path)) if adapters.is_adapter_folder(section.name_or_path) else None
    if adapter is not None:
        section = section.model_copy(update={"name_or_path": adapter_base(adapter)})
    model = build_model(run.task.auto_class(), section, run.config, run.tokenizer)
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


def train(
    recipe: Recipe, overwrite: bool = False, resume: str | bool | None = None, command: str | None = None
) -> dict[str, Any]:
    """Train, evaluate and write the run folder; returns the eval metrics. `command`: the command line that
    started the run, for the model card.

    The run is checked (folder, checkpoint, data, model config) before anything is written; a run that
    replaces an earlier one is written beside it and swapped in only once it has succeeded."""
    from llmkit import run_hooks
    from llmkit.console import say, use_step_lines
    from llmkit.errors import Interrupted, TrainingDiverged
    from llmkit.run_folder import RunFolder, local_inputs
    from llmkit.trainer import (
        DivergenceGuard,
        StopOnSignal,
        build_trainer,
        resolve_resume,
        training_arguments,
        weights_are_finite,
    )

    folder = RunFolder.for_training(Path(recipe.training.output_dir), overwrite, bool(resume), local_inputs(recipe))
    checkpoint = resolve_resume(folder.target, resume, recipe.training.max_steps)
    started = time.time()
    args = training_arguments(recipe, output_dir=str(folder.work))
    run = setup(recipe)
    recipe = run.recipe  # with the defaults that depend on the model filled in
    for note in recipe.defaults_applied:
        say(f"note: using {note}; set it in the recipe to choose another")
    with args.main_process_first(desc="preprocessing"):
        prepared = run.task.preprocess(recipe, run.raw, run.tokenizer)
    model = trainable_model(run)
    guard, stop = DivergenceGuard(), StopOnSignal()
    hooks = [guard.callback(), stop.callback(), *run_hooks.callbacks(recipe)]
    trainer = build_trainer(run.task, recipe, args, model, run.tokenizer, prepared, callbacks=hooks)
    guard.watch(trainer)
    use_step_lines(trainer, tokens_per_step(prepared, args))
    folder.create()
    stop.install()  # until the run is committed: a signal after the last step still stops it
    try:
        result = train_from(trainer, checkpoint)
        if stop.stopped_at is not None:
            message = interrupted_message(folder, stop.stopped_at)
            raise Interrupted(message, signal_number=stop.signal, resumable=not folder.replacing)
        if guard.diverged_at is not None:
            raise TrainingDiverged(diverged_message(folder, f"the loss is not finite at step {guard.diverged_at}"))
        evaluation = run.task.evaluate(trainer, prepared, recipe, run.tokenizer) if prepared.eval is not None else None
        metrics = {**result.metrics, **(evaluation.metrics if evaluation else {})}
        eval_loss = metrics.get("eval_loss")
        if isinstance(eval_loss, float) and not math.isfinite(eval_loss):
            raise TrainingDiverged(diverged_message(folder, f"the eval loss is {eval_loss} after training"))
        if not weights_are_finite(trainer.model):
            raise TrainingDiverged(diverged_message(folder, "the trained weights hold NaN or infinite values"))
        stop.raise_if_signalled(folder)
        folder.save_model(trainer, run.tokenizer)
        if trainer.is_world_process_zero():
            write_run(folder, recipe, run, trainer, prepared, evaluation, metrics, started, command)
            run_hooks.finished(trainer, folder.work, metrics)
        trainer.accelerator.wait_for_everyone()
        stop.raise_if_signalled(folder)
    except Interrupted as stopped:
        run_hooks.failed(trainer, stopped)
        folder.release()  # a replacing run keeps its staging folder: the checkpoint is there
        stop.restore()
        raise
    except BaseException as error:
        run_hooks.failed(trainer, error)
        folder.discard()
        stop.restore()
        raise
    folder.commit()
    stop.restore()
    return metrics


def train_from(trainer: Any, checkpoint: str | None) -> Any:
    """`trainer.train`, with a checkpoint that does not fit the recipe's model as a one-line error."""
    try:
        return trainer.train(resume_from_checkpoint=checkpoint)
    except RuntimeError as err:
        if checkpoint is None or "size mismatch" not in str(err):
            raise
        raise LlmkitError(
            f"--resume {checkpoint}: the checkpoint's weights do not fit the recipe's model (was the model "
            "changed since? size mismatch)"
        ) from None


def write_run(
    folder: RunFolder,
    recipe: Recipe,
    run: Setup,
    trainer: Any,
    prepared: Prepared,
    evaluation: Evaluation | None,
    metrics: dict[str, Any],
    started: float,
    command: str | None,
) -> None:
    """Everything a finished run leaves besides its weights (main process only)."""
    from llmkit import report, run_hooks
    from llmkit.run_folder import numeric_metrics

    trainer.save_state()  # trainer_state.json: the full log history (losses, eval points)
    if recipe.peft is not None:
        from llmkit.adapters import save_base_config

        save_base_config(trainer.model, folder.work)
    folder.write_recipe(recipe)
    folder.write_json("metrics.json", numeric_metrics(metrics))
    if evaluation is not None and evaluation.predictions is not None:
        folder.write_predictions(evaluation.predictions)
    report.plot_losses(trainer.state.log_history, folder.work / "loss.png")
    card = report.model_card(
        recipe, metrics, adapter=recipe.peft is not None, auto_class=run.task.auto_class_name, command=command
    )
    folder.write_text("README.md", card)
    facts = run_facts(recipe, started, trainer, prepared, run.raw)
    folder.write_json("run.json", {**facts, **run_hooks.facts(trainer)})


def interrupted_message(folder: RunFolder, step: int) -> str:
    saved = folder.work / f"checkpoint-{step}"
    if folder.replacing:
        return (
            f"interrupted at step {step}; the previous run in {folder.target} is untouched and the new run's "
            f"checkpoint is in {saved} (delete {folder.work} to drop it)"
        )
    return f"interrupted at step {step}; checkpoint saved in {saved}"


def diverged_message(folder: RunFolder, what: str) -> str:
    """Names only checkpoints that exist: a replacing run's are dropped with it, the previous run stays."""
    advice = "lower training.learning_rate (or set training.max_grad_norm)"
    if folder.replacing:
        kept = f"the previous run in {folder.target} is untouched"
        return f"training diverged: {what}; {advice}; no model was written and {kept}"
    kept = folder.checkpoints()
    where = f"checkpoints kept in {folder.work}: {', '.join(kept)}" if kept else "no checkpoint was saved before it"
    return f"training diverged: {what}; {advice}; no final model was written ({where})"


def run_facts(
    recipe: Recipe, started: float, trainer: Any, prepared: Prepared, raw: DatasetDict | None = None
) -> dict[str, Any]:
    """Versions, device, seed, data fingerprints and timing: what it takes to reproduce or compare a run;
    and how it was spread (strategy, world size, machines, per-process and global batch), as it ran."""
    import platform
    import subprocess

    import torch
    import transformers

    from llmkit import __version__
    from llmkit.data import fingerprints
    from llmkit.launch import strategy

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
        **strategy(trainer),
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


def tokens_per_step(prepared: Prepared, args: Any) -> float | None:
    """Real input tokens one optimizer step consumes (for the tokens/s of the step lines)."""
    if prepared.train is None or len(prepared.train) == 0:
        return None
    batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    return mean_tokens(prepared.train) * batch


def mean_tokens(features: Any) -> float:
    """Real (unpadded) input tokens per training example: samples/s × this = tokens/s."""
    from llmkit.tasks.mechanisms.packing import token_count

    return token_count(features) / max(len(features), 1)


def recipe_for_checkpoint(recipe: Recipe, checkpoint: Path) -> Recipe:
    """The same recipe, but loading model and tokenizer from a trained run folder."""
    from llmkit.run_folder import check_weights, is_model_folder

    if not is_model_folder(checkpoint):
        raise LlmkitError(f"--checkpoint {checkpoint} is not a run folder (no config.json or adapter_config.json)")
    check_weights(checkpoint, "run folder")
    content = recipe.model_dump(mode="json")
    content["model"] = {**content["model"], "name_or_path": str(checkpoint), "from_config": None}
    content["tokenizer"] = {"name_or_path": str(checkpoint), "train": None}
    return recipe_from_mapping(content)


def evaluate(recipe: Recipe, checkpoint: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """Evaluate a trained run folder on the recipe's eval data.

    The training run's own `metrics.json` is never touched: the results go to `eval/<data name>/` inside an
    llmkit run folder (returned), and are only printed for a folder llmkit did not write (None)."""
    from llmkit.console import use_step_lines
    from llmkit.run_folder import is_llmkit_folder, is_model_folder, numeric_metrics, write_json
    from llmkit.trainer import build_trainer, training_arguments

    folder = checkpoint or Path(recipe.training.output_dir)
    if checkpoint is None and not is_model_folder(folder):
        raise LlmkitError(
            f"recipe field `training.output_dir`: no trained model in {folder} (train first or pass --checkpoint)"
        )
    recipe = recipe_for_checkpoint(recipe, folder)
    run = setup(recipe, need_train=False)
    recipe = run.recipe
    args = training_arguments(recipe, output_dir=str(folder), report_to="none")
    prepared = _prepare_eval(run)
    model = load_model(run)
    trainer = build_trainer(run.task, recipe, args, model, run.tokenizer, prepared)
    use_step_lines(trainer, None, training=False)
    evaluation = run.task.evaluate(trainer, prepared, recipe, run.tokenizer)
    if not is_llmkit_folder(folder):
        return evaluation.metrics, None
    written = folder / "eval" / eval_name(recipe)
    if trainer.is_world_process_zero():
        write_json(written / "metrics.json", numeric_metrics(evaluation.metrics))
        if evaluation.predictions is not None:
            from llmkit.run_folder import RunFolder

            RunFolder(written, written).write_predictions(evaluation.predictions)
    return evaluation.metrics, written


def eval_name(recipe: Recipe) -> str:
    """A folder name for the eval data: the file's name, the hub split, or the held-out fraction."""
    import re

    data = recipe.data
    if data.eval is None:
        name = f"heldout-{data.validation_split:g}" if data.validation_split else "eval"
    elif Path(data.eval).exists():
        name = Path(data.eval).stem if Path(data.eval).is_file() else Path(data.eval).name
    else:
        name = f"{Path(data.train).name}-{data.eval}"
    return re.sub(r"[^\w.-]+", "-", name).strip("-.") or "eval"


def _prepare_eval(run: Setup) -> Prepared:
    """Preprocess the eval split alone (tasks accept a DatasetDict without `train`)."""
    from datasets import DatasetDict

    return run.task.preprocess(run.recipe, DatasetDict({"eval": run.raw["eval"]}), run.tokenizer)


def merge_adapter(adapter_dir: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """`llmkit merge`: a LoRA run folder → a plain model folder (merged weights, tokenizer, recipe), written
    beside OUT_DIR and moved in place once complete."""
    from llmkit import adapters, report
    from llmkit.models import adapter_base
    from llmkit.recipe import load_recipe
    from llmkit.run_folder import RunFolder, check_weights, local_inputs

    if not adapters.is_adapter_folder(adapter_dir):
        raise LlmkitError(f"{adapter_dir} is not a LoRA run folder (no adapter_config.json)")
    if not (adapter_dir / "recipe.yaml").is_file():
        raise LlmkitError(f"{adapter_dir} has no recipe.yaml (was it written by llmkit finetune?)")
    if out_dir.resolve() == adapter_dir.resolve():
        raise LlmkitError("OUT_DIR must differ from ADAPTER_DIR: merging in place would delete the adapter run")
    check_weights(adapter_dir, "adapter run folder")
    recipe = recipe_for_checkpoint(load_recipe(adapter_dir / "recipe.yaml"), adapter_dir)
    base = Path(adapter_base(adapter_dir))
    protected = [("the adapter run", adapter_dir), *local_inputs(recipe)]
    if base.exists():
        protected.append(("the base model", base))
        check_weights(base, "base model")
    folder = RunFolder.for_output(out_dir, overwrite, protected, kind="merge")
    run = setup_for_inference(recipe)
    merged = adapters.merge(load_model(run))
    folder.create()
    try:
        folder.save_pretrained(merged, run.tokenizer)
        folder.write_text("recipe.yaml", (adapter_dir / "recipe.yaml").read_text(encoding="utf-8"))
        card = report.merged_card(adapter_dir, out_dir, run.recipe, type(merged).__name__)
        folder.write_text("README.md", card)
    except BaseException:
        folder.discard()
        raise
    folder.commit()
    return out_dir
