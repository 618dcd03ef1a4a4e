"""The Optuna study of `llmkit tune`: its folder, its SQLite storage, and opening or continuing it (the
sampler seeded from the trials so far, the recipe as written enqueued as trial 0)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError
from llmkit.tune.space import base_mapping, parameters, value_at

if TYPE_CHECKING:
    from llmkit.recipe import Recipe

STUDY_NAME = "llmkit"


def tune_folder(recipe: Recipe) -> Path:
    assert recipe.tune is not None
    if recipe.tune.output_dir:
        return Path(recipe.tune.output_dir)
    output = Path(recipe.training.output_dir)
    return output.with_name(f"{output.name}-tune")


def is_tune_folder(path: Path) -> bool:
    """A folder `llmkit tune` made: its llmkit marker says `tune` (a run folder must not become a study)."""
    import json

    from llmkit.run_folder import MARKER

    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(marker, dict) and marker.get("written_by") == "llmkit" and marker.get("kind") == "tune"


def counted(trial: Any) -> bool:
    """Trials that count towards --trials: finished, pruned, or diverged (not ones cut short by the user)."""
    import optuna

    state = trial.state
    if state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
        return True
    return state == optuna.trial.TrialState.FAIL and bool(trial.user_attrs.get("diverged"))


def open_study(recipe: Recipe, target: Path) -> Any:
    """Create or load the study; the sampler's seed follows the trials so far (a continued study does not
    draw the first trials' values again)."""
    import optuna

    from llmkit.tune_trial import make_pruner

    assert recipe.tune is not None
    storage = storage_url(target)
    pruner = make_pruner(recipe.tune.pruner.model_dump())
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, load_if_exists=True, direction=recipe.tune.goal, pruner=pruner
    )
    if study.direction.name.lower() != recipe.tune.goal:
        raise LlmkitError(
            f"recipe field `tune.direction`: the study in {target} was made to {study.direction.name.lower()}; "
            f"use another tune.output_dir to {recipe.tune.goal}"
        )
    stored = study.user_attrs.get("metric")
    if stored is None:
        study.set_user_attr("metric", recipe.tune.metric)
    elif stored != recipe.tune.metric:
        raise LlmkitError(
            f"recipe field `tune.metric`: the study in {target} optimises {stored}; use another tune.output_dir"
        )
    for trial in study.trials:  # left RUNNING by a process that was killed: it will not report again
        if trial.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    count = len(study.trials)
    startup = max(2, min(10, recipe.tune.pruner.startup_trials + 1))
    study.sampler = optuna.samplers.TPESampler(seed=recipe.training.seed + count, n_startup_trials=startup)
    if count == 0:
        enqueue_baseline(recipe, study)
    return study


def enqueue_baseline(recipe: Recipe, study: Any) -> None:
    """The recipe as written is trial 0, when each searched field's value lies in the space."""
    content = base_mapping(recipe)
    values = {parameter.path: value_at(content, parameter.path) for parameter in parameters(recipe)}
    if all(parameter.contains(values[parameter.path]) for parameter in parameters(recipe)):
        study.enqueue_trial(values, user_attrs={"baseline": True})


def storage_url(target: Path) -> str:
    return f"sqlite:///{(target / 'study.db').resolve()}"


def stored_attrs(study: Any, trial: Any) -> dict[str, Any]:
    """The trial's user attributes as stored (a re-launched trial process writes them, not this one)."""
    return dict(study._storage.get_trial(trial._trial_id).user_attrs)
