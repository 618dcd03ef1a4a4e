"""One trial of `llmkit tune`: the recipe with the sampled values, trained as a run folder of its own (in
this process, or re-launched over many), its metric returned to the study."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError, TrainingDiverged
from llmkit.tune.space import Parameter, base_mapping, format_value, with_values
from llmkit.tune.study import storage_url, stored_attrs

if TYPE_CHECKING:
    from llmkit.launch import LaunchOptions
    from llmkit.recipe import Recipe


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """The trial's variables set while it runs (a re-launched trial process inherits them), then restored."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Objective:
    """One trial: the recipe with the sampled values, trained as a run folder of its own; returns the metric."""

    def __init__(
        self, recipe: Recipe, space: list[Parameter], target: Path, study: Any, launching: LaunchOptions | None
    ) -> None:
        self.recipe = recipe
        self.space = space
        self.target = target
        self.study = study
        self.launching = launching

    def __call__(self, trial: Any) -> float:
        import optuna

        from llmkit.console import say
        from llmkit.recipe import recipe_from_mapping
        from llmkit.tune_trial import environment as trial_environment

        assert self.recipe.tune is not None
        values = {parameter.path: parameter.suggest(trial) for parameter in self.space}
        run_dir = self.target / f"trial-{trial.number:04d}"
        content = with_values(base_mapping(self.recipe), values)
        content["training"]["output_dir"] = str(run_dir)
        trial_recipe = recipe_from_mapping(content)
        trial.set_user_attr("run_dir", run_dir.name)
        shown = ", ".join(f"{path}={format_value(value)}" for path, value in values.items())
        say(f"trial {trial.number}: {shown}")
        started = time.time()
        tune = self.recipe.tune
        env = trial_environment(
            storage_url(self.target),
            self.study.study_name,
            trial._trial_id,
            tune.metric,
            tune.pruner.model_dump(),
        )
        overwrite = run_dir.is_dir() and any(run_dir.iterdir())
        try:
            with environment(env):
                metrics = self.train(trial_recipe, run_dir, overwrite)
        except TrainingDiverged as diverged:
            trial.set_user_attr("diverged", str(diverged))
            say(f"trial {trial.number} diverged: {diverged}")
            raise
        finally:
            trial.set_user_attr("seconds", round(time.time() - started, 2))
        pruned_at = stored_attrs(self.study, trial).get("pruned_at")
        if pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at step {pruned_at}")
        if tune.metric not in metrics:
            listed = ", ".join(sorted(k for k in metrics if isinstance(metrics[k], int | float)))
            raise LlmkitError(f"recipe field `tune.metric`: the run has no metric `{tune.metric}` (it has: {listed})")
        value = float(metrics[tune.metric])
        if not math.isfinite(value):
            trial.set_user_attr("diverged", f"{tune.metric} is {value}")
            raise TrainingDiverged(f"{tune.metric} is {value}")
        return value

    def train(self, recipe: Recipe, run_dir: Path, overwrite: bool) -> dict[str, Any]:
        from llmkit import launch, pipeline

        if self.launching is None or not launch.needs_relaunch(self.launching):
            return pipeline.train(recipe, overwrite=overwrite)
        import json

        path = self.target / f"{run_dir.name}.yaml"
        from llmkit.run_folder import RunFolder

        RunFolder(self.target, self.target, kind="tune").write_text(path.name, recipe.to_yaml())
        code = launch.relaunch(self.launching, ["finetune", str(path), *(["--overwrite"] if overwrite else [])])
        if code == TrainingDiverged.exit_code:
            raise TrainingDiverged(f"trial {run_dir.name} diverged (see above)")
        if code != 0:
            raise LlmkitError(f"trial {run_dir.name} failed (exit code {code}); the lines above say why")
        return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
