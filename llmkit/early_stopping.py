"""Early stopping (`training.early_stopping: {patience, metric, threshold}`) through transformers'
`EarlyStoppingCallback`.

The callback only works when evaluation, saving and best-model tracking agree, so the arguments are made
consistent here rather than left to the user: evaluation at steps (when it was off), a checkpoint at every
evaluation, `load_best_model_at_end` with the metric and its direction. The run then ends on the best
checkpoint, and says when and why it stopped (console and `run.json`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from llmkit.recipe import EarlyStoppingSection, Recipe


def lower_is_better(metric: str) -> bool:
    return metric.endswith(("loss", "perplexity"))


def arguments(recipe: Recipe, chosen: dict[str, Any]) -> dict[str, Any]:
    """`chosen` (the recipe's TrainingArguments keywords) with what early stopping needs; unchanged without it."""
    section = recipe.training.early_stopping
    if section is None:
        return chosen
    updated = dict(chosen)
    strategy = str(getattr(updated.get("eval_strategy"), "value", updated.get("eval_strategy")) or "no")
    if strategy == "no":
        strategy = "steps"
    updated["eval_strategy"] = strategy
    updated["save_strategy"] = strategy
    if strategy == "steps":
        steps = updated.get("eval_steps") or updated.get("logging_steps")
        updated["eval_steps"] = steps
        updated["save_steps"] = steps
    updated["load_best_model_at_end"] = True
    updated["metric_for_best_model"] = section.metric
    updated.setdefault("greater_is_better", not lower_is_better(section.metric))
    return updated


def callback(section: EarlyStoppingSection) -> Any:
    """transformers' EarlyStoppingCallback that also remembers the step it stopped at and says so."""
    from transformers import EarlyStoppingCallback

    from llmkit.console import say

    class StopWhenNoLongerImproving(EarlyStoppingCallback):
        def __init__(self) -> None:
            super().__init__(early_stopping_patience=section.patience, early_stopping_threshold=section.threshold)
            self.section = section
            self.stopped_at: int | None = None
            self.training = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            super().on_train_begin(args, state, control, **kwargs)
            self.training = True

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float], **kwargs: Any) -> None:
            if section.metric not in metrics:
                found = ", ".join(sorted(key for key in metrics if key.startswith("eval_") and "runtime" not in key))
                raise LlmkitError(
                    f"recipe field `training.early_stopping.metric`: `{section.metric}` is not among the metrics "
                    f"of an evaluation during training ({found})"
                )
            if not self.training:  # the final evaluation after training
                return
            super().on_evaluate(args, state, control, metrics, **kwargs)
            if self.stopped_at is None and self.early_stopping_patience_counter >= self.early_stopping_patience:
                self.stopped_at = state.global_step

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.training = False
            if self.stopped_at is not None and state.is_world_process_zero:
                say(stopped_line(self.stopped_at, state, section))

    return StopWhenNoLongerImproving()


def stopped_line(step: int, state: Any, section: EarlyStoppingSection) -> str:
    best = state.best_metric
    shown = f"{best:.4g}" if isinstance(best, float) else str(best)
    by = f" by more than {section.threshold:g}" if section.threshold else ""
    return (
        f"early stopping at step {step}: {section.metric} did not improve{by} for {section.patience} evaluation(s) "
        f"in a row; the best checkpoint (step {state.best_global_step}, {section.metric} {shown}) is the final model"
    )


def facts(trainer: Any) -> dict[str, Any]:
    """`run.json`'s `early_stopped` entry: null when the run had early stopping but went to the end."""
    found = next(
        (c for c in trainer.callback_handler.callbacks if hasattr(c, "stopped_at") and hasattr(c, "section")), None
    )
    if found is None:
        return {}
    if found.stopped_at is None:
        return {"early_stopped": None}
    state = trainer.state
    return {
        "early_stopped": {
            "at_step": found.stopped_at,
            "best_step": state.best_global_step,
            "metric": found.section.metric,
            "best": state.best_metric,
            "patience": found.section.patience,
            "best_checkpoint": Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None,
        }
    }
