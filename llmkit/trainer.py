"""TrainingArguments and Trainer construction: the recipe's `training:` plus llmkit's safe defaults."""

from __future__ import annotations

import importlib.util
import math
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

    from llmkit.recipe import Recipe
    from llmkit.tasks.base import Prepared, Task


def default_arguments() -> dict[str, Any]:
    """Defaults that differ from Hugging Face's, each for a reason a user would agree with."""
    import torch

    on_gpu = torch.cuda.is_available()
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
    }


def training_arguments(recipe: Recipe, **overrides: Any) -> TrainingArguments:
    """The recipe's `training:` section as TrainingArguments (Seq2Seq's superset, valid for every Trainer)."""
    from transformers import Seq2SeqTrainingArguments

    kwargs = {**default_arguments(), **recipe.training.arguments(), **overrides}
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
