"""TrainingArguments and Trainer construction: the recipe's `training:` plus llmkit's safe defaults."""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

    from llmkit.recipe import Recipe
    from llmkit.tasks.base import Prepared, Task


def default_arguments() -> dict[str, Any]:
    """Defaults that differ from Hugging Face's, each for a reason a user would agree with."""
    import torch

    # `--cpu` (or accelerate's own ACCELERATE_USE_CPU) keeps a GPU machine's processes on the CPU.
    on_gpu = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true")
    return {
        # Tasks produce exactly the columns their collator needs (MLM's special-token mask, for one).
        "remove_unused_columns": False,
        "report_to": ["tensorboard"] if importlib.util.find_spec("tensorboard") else "none",
        "use_cpu": not on_gpu,
        "dataloader_pin_memory": on_gpu,
        # Let a NaN reach the divergence check instead of being averaged away in the logs.
        "logging_nan_inf_filter": False,
        "ddp_find_unused_parameters": False,
        "save_total_limit": 2,
        "eval_strategy": "no",
        # Use the hardware: bf16 autocast where the GPU has it (SDPA attention and fused AdamW are already
        # the transformers defaults); a recipe's own `fp16`/`bf16` wins.
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
    }


def training_arguments(recipe: Recipe, **overrides: Any) -> TrainingArguments:
    """The recipe's `training:` section as TrainingArguments (Seq2Seq's superset, valid for every Trainer)."""
    from transformers import Seq2SeqTrainingArguments

    chosen = {**recipe.training.arguments(), **overrides}
    kwargs = {**default_arguments(), **chosen}
    if chosen.get("fp16") and "bf16" not in chosen:
        kwargs["bf16"] = False
    if kwargs.get("fp16") and kwargs.get("use_cpu"):
        raise LlmkitError("recipe field `training.fp16`: fp16 needs a GPU; on CPU use `training.bf16: true` or neither")
    try:
        return Seq2SeqTrainingArguments(**kwargs)
    except (ValueError, TypeError) as err:
        message = str(err).strip().splitlines()[0]
        raise LlmkitError(f"recipe section `training`: {message}") from None


def divergence_guard() -> Any:
    """A callback that stops training at the first non-finite loss and remembers the step."""
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        diverged_at: int | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                self.diverged_at = state.global_step
                control.should_training_stop = True
                control.should_save = False

    return StopOnNonFiniteLoss()


def build_trainer(
    task: Task,
    recipe: Recipe,
    args: TrainingArguments,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prepared: Prepared,
    callbacks: list[Any] | None = None,
) -> Trainer:
    trainer_class = task.trainer_class(model.config)
    return trainer_class(
        model=model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=tokenizer,
        data_collator=task.collator(recipe, tokenizer),
        compute_metrics=task.compute_metrics(recipe),
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics(),
        callbacks=callbacks,
    )


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint: `trainer_state.json` is written last, so a folder without it was cut short."""
    complete = [
        folder
        for folder in output.glob("checkpoint-*")
        if folder.name.removeprefix("checkpoint-").isdigit() and (folder / "trainer_state.json").is_file()
    ]
    return max(complete, key=lambda folder: int(folder.name.removeprefix("checkpoint-")), default=None)


def resolve_resume(output: Path, resume: str | bool | None) -> str | None:
    """`--resume latest` (True) → the newest complete checkpoint in the run folder; `--resume PATH` → that folder."""
    if not resume:
        return None
    if resume is True:
        found = latest_checkpoint(output)
        if found is None:
            raise LlmkitError(f"--resume: no complete checkpoint in {output} (nothing to continue; drop --resume)")
        return str(found)
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise LlmkitError(f"--resume {path}: not a checkpoint folder (no trainer_state.json)")
    return str(path)


class StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM during training: finish the current step, save a checkpoint, stop.

    All processes of a multi-process run stop at the same step (the flag is reduced across them), so their
    collective checkpoint save cannot deadlock. A second Ctrl-C in a single process aborts at once.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: Any) -> None:
        if number == signal.SIGINT and self.signal == signal.SIGINT and "LOCAL_RANK" not in os.environ:
            raise KeyboardInterrupt
        self.signal = number

    def callback(self) -> Any:
        from transformers import TrainerCallback

        owner = self

        class SaveAndStop(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if owner.requested(args):
                    owner.stopped_at = state.global_step
                    control.should_save = True
                    control.should_training_stop = True

        return SaveAndStop()

    def requested(self, args: Any) -> bool:
        """Whether any process got the signal (one all-reduce per step in a multi-process run)."""
        flag = self.signal is not None
        if args.world_size > 1:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                tensor = torch.tensor([int(flag)], device=args.device)
                dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
                flag = bool(tensor.item())
        return flag
