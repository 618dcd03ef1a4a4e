"""`llmkit tune RECIPE --trials N`: run (or continue) the study until it holds N counted trials, then write
its summary."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from llmkit.errors import LlmkitError, TrainingDiverged
from llmkit.tune.objective import Objective
from llmkit.tune.space import Parameter, check_space, parameters
from llmkit.tune.study import counted, is_tune_folder, open_study, tune_folder
from llmkit.tune.summary import Outcome, summarize

if TYPE_CHECKING:
    from llmkit.launch import LaunchOptions
    from llmkit.recipe import Recipe


def run(
    recipe: Recipe,
    trials: int,
    timeout_minutes: float | None = None,
    launch_options: LaunchOptions | None = None,
) -> Outcome:
    """Run (or continue) the study until it holds `trials` counted trials, then write its summary."""
    space = checked_space(recipe, trials, launch_options)

    import optuna

    from llmkit.console import say
    from llmkit.run_folder import RunFolder, local_inputs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = tune_folder(recipe)
    if target.is_dir() and any(target.iterdir()) and not is_tune_folder(target):
        raise LlmkitError(
            f"tune folder {target} is not empty and `llmkit tune` did not make it; set `tune.output_dir` to "
            "another folder (or move this one)"
        )
    folder = RunFolder.for_training(target, overwrite=False, resume=True, protected=local_inputs(recipe))
    folder.kind = "tune"
    started = time.time()
    folder.create()
    try:
        study = open_study(recipe, target)
        done = [t for t in study.trials if counted(t)]
        remaining = trials - len(done)
        if done:
            say(f"continuing the study in {target / 'study.db'}: {len(done)} trial(s) done, {max(remaining, 0)} to go")
        else:
            say(f"tuning {recipe.tune.metric} ({recipe.tune.goal}) over " + "; ".join(p.describe() for p in space))
        if remaining > 0:
            objective = Objective(recipe, space, target, study, launch_options)
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=timeout_minutes * 60 if timeout_minutes else None,
                catch=(TrainingDiverged,),
                gc_after_trial=True,
            )
        return summarize(recipe, space, study, folder, time.time() - started)
    finally:
        folder.release()


def checked_space(recipe: Recipe, trials: int, launch_options: LaunchOptions | None) -> list[Parameter]:
    """The search space, once the request is known to be one `llmkit tune` can run (before any work)."""
    from llmkit.extras import require_extra

    require_extra("tune", "`llmkit tune`")
    if recipe.tune is None:
        raise LlmkitError("the recipe has no `tune:` section (tune.metric, tune.space) to search")
    if trials < 1:
        raise LlmkitError("--trials must be at least 1")
    if launch_options is not None and launch_options.machines > 1:
        raise LlmkitError("`llmkit tune` runs its trials on one machine: drop --num-machines")
    space = parameters(recipe)
    check_space(recipe, space)
    return space
