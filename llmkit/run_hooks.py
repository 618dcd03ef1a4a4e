"""What a training run adds to the Trainer beyond its own guards: early stopping, experiment tracking and,
inside `llmkit tune`, the trial's intermediate reports. `Run.train` calls these four functions and knows
nothing else about them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit import early_stopping, tracking, tune_trial
from llmkit.errors import Interrupted

if TYPE_CHECKING:
    from llmkit.recipe import Recipe


def callbacks(recipe: Recipe) -> list[Any]:
    found = [tracking.callback(recipe)]
    if recipe.training.early_stopping is not None:
        found.append(early_stopping.callback(recipe.training.early_stopping))
    reporter = tune_trial.callback()
    if reporter is not None:
        found.append(reporter)
    return found


def facts(trainer: Any) -> dict[str, Any]:
    """Entries for `run.json` (when and why early stopping ended the run)."""
    return early_stopping.facts(trainer)


def finished(trainer: Any, folder: Path, metrics: dict[str, Any]) -> None:
    """The run folder is written (main process): the tracked runs get the recipe, metrics and artifacts."""
    tracking.finish(trainer, folder, metrics)


def failed(trainer: Any, error: BaseException) -> None:
    tracking.abandon(trainer, "KILLED" if isinstance(error, Interrupted | KeyboardInterrupt) else "FAILED")
