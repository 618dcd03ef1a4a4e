"""One run, in phases: prepare → model → trainer → train → evaluate.

`Run.prepare` is what `llmkit check` needs and where everything that can be wrong with the user's input is
found (recipe against the model's config, data and columns, tokenizer), before any weights are loaded or an
output folder is touched. The commands take the phases they need, in this order:

- `pretrain`/`finetune` → `train()`: prepare, features, model, trainer, train (guarded), evaluate, write.
- `eval` → `evaluate()`: prepare the eval split for a run folder, features, model, trainer, evaluate.
- `check` → `check.report()`: prepare and features.
- `predict` and `merge` → `Run.of_folder()` / `Run.for_inference()` and model (`predict.predict_rows`,
  `merge.merge`).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit import adapters, models, report, run_hooks
from llmkit.checkpoints import resolve_resume
from llmkit.console import quiet_libraries, say, use_step_lines
from llmkit.data import check_roles, load_raw, map_columns
from llmkit.errors import ExpectationsNotMet, Interrupted, LlmkitError, TrainingDiverged
from llmkit.recipe import Recipe, load_recipe, meets, recipe_from_mapping
from llmkit.run_folder import (
    MODEL_FILES,
    RunFolder,
    adapter_base,
    check_weights,
    is_adapter_folder,
    is_llmkit_folder,
    is_main_process,
    is_model_folder,
    local_inputs,
    recipe_path,
)
from llmkit.streaming import is_streamed
from llmkit.tasks import TASKS
from llmkit.trainer import DivergenceGuard, StopOnSignal, build_trainer, training_arguments, weights_are_finite

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import PretrainedConfig, PreTrainedTokenizerBase, Trainer, TrainingArguments

    from llmkit.tasks.base import Evaluation, Prepared, Task

#: `data.max_length` when the recipe leaves it unset and the model allows more
DEFAULT_MAX_LENGTH = 512


@dataclass
class Run:
    """A recipe made concrete: its task, its data, the model's config and the tokenizer (no weights yet)."""

    recipe: Recipe
    task: Task
    raw: DatasetDict
    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase

    # ------------------------------------------------------------------ prepare

    @classmethod
    def prepare(cls, recipe: Recipe, need_train: bool = True) -> Run:
        """Probe everything the user gave (model config, data, columns, tokenizer) without loading weights."""
        task, config, recipe = model_side(recipe)
        loaded = load_raw(recipe.data, need_train, task.read_file)
        raw = map_columns(loaded, recipe.data.columns, task.roles, task.optional_roles)
        kinds = {role: task.kind(role) for role in (*task.roles, *task.optional_roles)}
        check_roles(raw, kinds, recipe.data.columns)
        if not need_train and "eval" not in raw:
            raise LlmkitError("the recipe has no eval data: set `data.eval` or `data.validation_split`")
        if recipe.tokenizer.train is not None:
            texts = (text for row in raw["train"] for text in task.training_texts(row))
            tokenizer = models.train_tokenizer(recipe.tokenizer.train, texts)
        else:
            tokenizer = models.load_tokenizer(recipe.tokenizer, recipe.model)
        for key, value in task.config_overrides(recipe, raw).items():
            setattr(config, key, value)
        return cls(recipe, task, raw, config, tokenizer)

    @classmethod
    def for_inference(cls, recipe: Recipe) -> Run:
        """Model side only, no data: a trained run folder already holds its tokenizer and label maps."""
        from datasets import DatasetDict

        task, config, recipe = model_side(recipe)
        return cls(recipe, task, DatasetDict(), config, models.load_tokenizer(recipe.tokenizer, recipe.model))

    @classmethod
    def of_folder(cls, folder: Path) -> Run:
        """A trained run folder, ready for inference, from the recipe it keeps."""
        return cls.for_inference(recipe_for_checkpoint(load_recipe(recipe_path(folder)), folder))

    def features(self, args: TrainingArguments | None = None, eval_only: bool = False) -> Prepared:
        """The task's features; with `args`, the main process tokenizes first and the others reuse its cache."""
        from datasets import DatasetDict

        raw = DatasetDict({"eval": self.raw["eval"]}) if eval_only else self.raw
        if args is None:
            return self.task.preprocess(self.recipe, raw, self.tokenizer)
        with args.main_process_first(desc="preprocessing"):
            return self.task.preprocess(self.recipe, raw, self.tokenizer)

    # ------------------------------------------------------------------ model and trainer

    def model(self, trainable: bool = False) -> Any:
        """The model; a LoRA run folder is its base checkpoint with the trained adapter attached. `trainable`:
        new weights are drawn from the recipe's seed, LoRA is added when the recipe has `peft:`, and the
        share of weights that train is said."""
        from transformers import set_seed

        section = self.recipe.model
        adapter = Path(str(section.name_or_path)) if is_adapter_folder(section.name_or_path) else None
        if adapter is not None:
            section = section.model_copy(update={"name_or_path": adapter_base(adapter)})
        if trainable:
            set_seed(self.recipe.training.seed)  # from config, task heads, LoRA: same recipe, same start
        model = models.build_model(self.task.auto_class(), section, self.config, self.tokenizer)
        if adapter is not None:
            model = adapters.attach(model, adapter)
        if trainable and self.recipe.peft is not None:
            model = adapters.wrap(model, self.recipe.peft)
        if trainable and is_main_process():
            print(adapters.describe_trainable(model), flush=True)
        return model

    def trainer(
        self, args: TrainingArguments, model: Any, prepared: Prepared, callbacks: list[Any] | None = None
    ) -> Trainer:
        return build_trainer(self.task, self.recipe, args, model, self.tokenizer, prepared, callbacks)

    # ------------------------------------------------------------------ train and evaluate

    def train(
        self,
        folder: RunFolder,
        args: TrainingArguments,
        prepared: Prepared,
        checkpoint: str | None,
        started: float,
        command: str | None,
    ) -> dict[str, Any]:
        """Build the trainer with its guards, train, evaluate, save and write the run folder; a replacing run is
        swapped in only once all of it has succeeded."""
        guard, stop = DivergenceGuard(), StopOnSignal()
        hooks = [guard.callback(), stop.callback(), *run_hooks.callbacks(self.recipe)]
        trainer = self.trainer(args, self.model(trainable=True), prepared, hooks)
        guard.watch(trainer)
        use_step_lines(trainer, tokens_per_step(prepared, args))
        folder.create()
        stop.install()  # until the run is committed: a signal after the last step still stops it
        try:
            metrics, evaluation = self._fit(folder, trainer, prepared, checkpoint, guard, stop)
            folder.save_model(trainer, self.tokenizer)
            if trainer.is_world_process_zero():
                self._write(folder, trainer, prepared, metrics, evaluation, started, command)
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

    def _fit(
        self,
        folder: RunFolder,
        trainer: Trainer,
        prepared: Prepared,
        checkpoint: str | None,
        guard: DivergenceGuard,
        stop: StopOnSignal,
    ) -> tuple[dict[str, Any], Evaluation | None]:
        """The training steps and the final evaluation; a stopped or diverged run raises instead."""
        result = train_from(trainer, checkpoint)
        if stop.stopped_at is not None:
            message = folder.interrupted_message(stop.stopped_at)
            raise Interrupted(message, signal_number=stop.signal, resumable=not folder.replacing)
        if guard.diverged_at is not None:
            raise TrainingDiverged(folder.diverged_message(f"the loss is not finite at step {guard.diverged_at}"))
        evaluation = self.evaluate(trainer, prepared) if prepared.eval is not None else None
        metrics = {**result.metrics, **(evaluation.metrics if evaluation else {})}
        eval_loss = metrics.get("eval_loss")
        if isinstance(eval_loss, float) and not math.isfinite(eval_loss):
            raise TrainingDiverged(folder.diverged_message(f"the eval loss is {eval_loss} after training"))
        if not weights_are_finite(trainer.model):
            raise TrainingDiverged(folder.diverged_message("the trained weights hold NaN or infinite values"))
        stop.raise_if_signalled(folder)
        return metrics, evaluation

    def _write(
        self,
        folder: RunFolder,
        trainer: Trainer,
        prepared: Prepared,
        metrics: dict[str, Any],
        evaluation: Evaluation | None,
        started: float,
        command: str | None,
    ) -> None:
        """What the finished run leaves besides its weights: recipe, metrics, predictions, card, facts, plot."""
        predictions = evaluation.predictions if evaluation is not None else None
        card = report.model_card(self.recipe, metrics, self.task.auto_class_name, command)
        measured = replace(prepared, train=None) if is_streamed(prepared.train) else prepared  # a stream has no length
        facts = {**report.run_facts(self.recipe, started, trainer, measured, self.raw), **run_hooks.facts(trainer)}
        folder.write_run(trainer, self.recipe, metrics, predictions, card, facts)

    def evaluate(self, trainer: Trainer, prepared: Prepared) -> Evaluation:
        return self.task.evaluate(trainer, prepared, self.recipe, self.tokenizer)


def model_side(recipe: Recipe) -> tuple[Task, PretrainedConfig, Recipe]:
    """The task and the model's config, checked against each other (no weights loaded), and the recipe with
    `data.max_length` resolved: unset, it is the model's own limit (at most 512); set, it must fit the model."""
    quiet_libraries()
    config = models.load_config(recipe.model)
    positions = models.max_positions(config)
    if recipe.data.max_length is None:
        default = min(positions or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)
        recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"max_length": default})})
    elif positions is not None and recipe.data.max_length > positions:
        raise LlmkitError(
            f"recipe field `data.max_length`: {recipe.data.max_length} is more than the model's {positions} positions"
        )
    task = TASKS[recipe.task].specialize(config, recipe)
    task.check_packing(recipe)
    task.check_streaming(recipe)
    task.check_architecture(config, recipe)
    if recipe.model.from_config is not None:
        models.check_buildable(task.auto_class(), config)
    return task, config, recipe


def recipe_for_checkpoint(recipe: Recipe, checkpoint: Path) -> Recipe:
    """The same recipe, but loading model and tokenizer from a trained run folder."""
    if not is_model_folder(checkpoint):
        raise LlmkitError(f"--checkpoint {checkpoint} is not a run folder (no {' or '.join(MODEL_FILES)})")
    check_weights(checkpoint, "run folder")
    content = recipe.model_dump(mode="json")
    content["model"] = {**content["model"], "name_or_path": str(checkpoint), "from_config": None}
    content["tokenizer"] = {"name_or_path": str(checkpoint), "train": None}
    return recipe_from_mapping(content)


def train_from(trainer: Trainer, checkpoint: str | None) -> Any:
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


def tokens_per_step(prepared: Prepared, args: TrainingArguments) -> float | None:
    """Real input tokens one optimizer step consumes (for the tokens/s of the step lines)."""
    if prepared.train is None or is_streamed(prepared.train) or len(prepared.train) == 0:
        return None  # a stream's rows are not counted ahead
    batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    return report.mean_tokens(prepared.train) * batch


# --------------------------------------------------------------------------- the commands' library calls


def train(
    recipe: Recipe, overwrite: bool = False, resume: str | bool | None = None, command: str | None = None
) -> dict[str, Any]:
    """`pretrain`/`finetune`: train, evaluate and write the run folder; returns the metrics. `resume`: True for
    the latest checkpoint, or a checkpoint folder; `command`: the command line, for the model card.

    The folder and the checkpoint are checked before anything is loaded, the data and model before
    anything is written."""
    folder = RunFolder.for_training(Path(recipe.training.output_dir), overwrite, bool(resume), local_inputs(recipe))
    checkpoint = resolve_resume(folder.target, resume, recipe.training.max_steps)
    started = time.time()
    args = training_arguments(recipe, output_dir=str(folder.work))
    run = Run.prepare(recipe)
    for note in run.recipe.defaults_applied:
        say(f"note: using {note}; set it in the recipe to choose another")
    prepared = run.features(args)
    return run.train(folder, args, prepared, checkpoint, started, command)


def evaluate(recipe: Recipe, checkpoint: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """`eval`: evaluate a trained run folder on the recipe's eval data.

    The training run's own `metrics.json` is never touched: the results go to `eval/<data name>/` inside an
    llmkit run folder (returned), and are only printed for a folder llmkit did not write (None)."""
    folder = checkpoint or Path(recipe.training.output_dir)
    if checkpoint is None and not is_model_folder(folder):
        raise LlmkitError(
            f"recipe field `training.output_dir`: no trained model in {folder} (train first or pass --checkpoint)"
        )
    run = Run.prepare(recipe_for_checkpoint(recipe, folder), need_train=False)
    args = training_arguments(run.recipe, output_dir=str(folder), report_to="none")
    prepared = run.features(eval_only=True)
    trainer = run.trainer(args, run.model(), prepared)
    use_step_lines(trainer, None, training=False)
    evaluation = run.evaluate(trainer, prepared)
    if not is_llmkit_folder(folder):
        return evaluation.metrics, None
    written = RunFolder.existing(folder)
    name = eval_name(run.recipe)
    if trainer.is_world_process_zero():
        written.write_evaluation(name, evaluation.metrics, evaluation.predictions)
    return evaluation.metrics, written.evaluation_folder(name)


def eval_name(recipe: Recipe) -> str:
    """A folder name for the eval data: the file's name, the hub split, or the held-out fraction."""
    data = recipe.data
    if data.eval is None:
        name = f"heldout-{data.validation_split:g}" if data.validation_split else "eval"
    elif Path(data.eval).exists():
        name = Path(data.eval).stem if Path(data.eval).is_file() else Path(data.eval).name
    else:
        name = f"{Path(data.train).name}-{data.eval}"
    return re.sub(r"[^\w.-]+", "-", name).strip("-.") or "eval"


def check_expectations(recipe: Recipe, metrics: dict[str, Any]) -> int:
    """`eval --check`: every `expect:` bar is met (returns how many); exit 1 naming those that are not."""
    missed = []
    for name, bar in recipe.expect.items():
        if name not in metrics:
            raise LlmkitError(f"recipe field `expect.{name}`: no such metric (metrics: {', '.join(metrics)})")
        if not meets(float(metrics[name]), bar):
            missed.append(f"{name} = {metrics[name]:.4g} (expected {bar})")
    if missed:
        raise ExpectationsNotMet("expectations not met: " + "; ".join(missed))
    return len(recipe.expect)
