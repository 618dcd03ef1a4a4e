"""The earlier function names of the run's phases, kept for the code that still calls them (`export`, `tune`,
benchmarks, tests): `setup` is `Run.prepare`, `setup_for_inference` is `Run.for_inference`, `load_model` is
`Run.model`, `merge_adapter` is `merge.merge`. New code uses `llmkit.run` directly."""

from __future__ import annotations

from typing import Any

from llmkit.merge import merge as merge_adapter
from llmkit.recipe import Recipe
from llmkit.run import Run, evaluate, model_side, recipe_for_checkpoint, train

__all__ = [
    "Run",
    "Setup",
    "evaluate",
    "load_model",
    "merge_adapter",
    "model_side",
    "recipe_for_checkpoint",
    "setup",
    "setup_for_inference",
    "train",
]

Setup = Run


def setup(recipe: Recipe, need_train: bool = True) -> Run:
    return Run.prepare(recipe, need_train)


def setup_for_inference(recipe: Recipe) -> Run:
    return Run.for_inference(recipe)


def load_model(run: Run) -> Any:
    return run.model()
