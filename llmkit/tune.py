"""`llmkit tune RECIPE --trials N`: an Optuna search over the recipe's `tune.space`.

Each trial is an ordinary run folder (`<tune folder>/trial-0003/`) trained by the same code as `finetune`,
with the sampled values put into the recipe by their dotted paths. The study lives in SQLite
(`<tune folder>/study.db`): running the command again continues it up to N trials in all. The first trial
of a new study is the recipe as written (when its values lie in the space), so the table shows what tuning
gained. TPE sampling is seeded from `training.seed`; the median pruner stops trials whose intermediate eval
metric falls behind (reported by `tune_trial`), and they are recorded as pruned. At the end: a table of
trials, `best.yaml` (the recipe with the best values, without `tune:`), `trials.json` and `tune.png`.

The tune folder defaults to `<training.output_dir>-tune`, beside the run folder rather than inside it, so
that `llmkit finetune best.yaml` can write the final model to `training.output_dir` without having to
replace (and so delete) the study.
"""

from __future__ import annotations

import math
import os
import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError, TrainingDiverged, did_you_mean

if TYPE_CHECKING:
    from llmkit.launch import LaunchOptions
    from llmkit.recipe import Recipe, TuneRange

STUDY_NAME = "llmkit"
#: fields a search may not change: where the trial is written, and the search itself
FIXED_FIELDS = ("training.output_dir", "tune")


@dataclass(frozen=True)
class Parameter:
    """One searched field: a float or int range, or a list of choices."""

    path: str
    kind: str  # float | int | choice
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.path} in {list(self.choices)}"
        scale = ", log" if self.log else ""
        return f"{self.path} in [{self.low:g}, {self.high:g}{scale}]"


# --------------------------------------------------------------------------- the search space


def field_annotation(path: str) -> Any:
    """The type of the recipe field at a dotted path; a one-line error naming the path when there is none."""
    from pydantic import BaseModel

    from llmkit.recipe import Recipe, TrainingSection, training_argument_types

    if any(path == fixed or path.startswith(f"{fixed}.") for fixed in FIXED_FIELDS):
        raise LlmkitError(f"recipe field `tune.space`: `{path}` cannot be searched (it is fixed for every trial)")
    parts = path.split(".")
    model: Any = Recipe
    walked: list[str] = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        fields = model.model_fields
        if part not in fields and model is TrainingSection:
            types = training_argument_types()
            if part in types and last:
                return types[part]
            known = [*fields, *types]
            raise LlmkitError(f"recipe field `tune.space`: `{path}` is not a recipe field{did_you_mean(part, known)}")
        if part not in fields:
            where = ".".join(walked) or "the recipe"
            raise LlmkitError(
                f"recipe field `tune.space`: `{path}` is not a recipe field (no `{part}` in {where})"
                f"{did_you_mean(part, fields)}"
            )
        annotation = fields[part].annotation
        walked.append(part)
        if last:
            return annotation
        candidates = [annotation, *typing.get_args(annotation)]
        section = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if section is None:
            if any(c is dict or typing.get_origin(c) is dict for c in candidates):
                return Any  # a free mapping (model.from_config): any key below it
            raise LlmkitError(f"recipe field `tune.space`: `{'.'.join(walked)}` is a value, not a section ({path})")
        model = section
    return Any


def is_int_field(annotation: Any) -> bool | None:
    """True for an int field, False for a float one, None when the schema does not say."""
    options = [annotation, *typing.get_args(annotation)]
    if float in options:
        return False
    if int in options:
        return True
    return None


def parameters(recipe: Recipe) -> list[Parameter]:
    """`tune.space` checked against the recipe schema and made into typed parameters."""
    assert recipe.tune is not None
    found = []
    for path, spec in recipe.tune.space.items():
        annotation = field_annotation(path)
        if isinstance(spec, list):
            bad = [c for c in spec if not (c is None or isinstance(c, bool | int | float | str))]
            if bad:
                raise LlmkitError(f"recipe field `tune.space.{path}`: choices must be numbers, text or booleans")
            found.append(Parameter(path, "choice", choices=tuple(spec)))
            continue
        found.append(range_parameter(path, spec, annotation))
    return found


def range_parameter(path: str, spec: TuneRange, annotation: Any) -> Parameter:
    whole = (
        isinstance(spec.low, int) and isinstance(spec.high, int) and (spec.step is None or isinstance(spec.step, int))
    )
    integer = is_int_field(annotation)
    if integer is True and not whole:
        raise LlmkitError(f"recipe field `tune.space.{path}`: the field takes whole numbers; give int low/high")
    kind = "int" if (integer is True or (integer is None and whole)) else "float"
    if spec.log and spec.step is not None:
        raise LlmkitError(f"recipe field `tune.space.{path}`: set `log` or `step`, not both")
    return Parameter(path, kind, float(spec.low), float(spec.high), spec.log, spec.step)


def with_values(content: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A recipe mapping with each dotted path set to its value (sections made as needed)."""
    import copy

    result = copy.deepcopy(content)
    for path, value in values.items():
        node = result
        *parents, leaf = path.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return result


def value_at(content: dict[str, Any], path: str) -> Any:
    node: Any = content
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def base_mapping(recipe: Recipe) -> dict[str, Any]:
    """The recipe as written (resolved), without its `tune:` section."""
    content = recipe.model_dump(mode="json")
    content.pop("tune", None)
    return content


def check_space(recipe: Recipe, space: list[Parameter]) -> None:
    """Recipes at the corners of the space must be valid recipes (wrong types fail here, not in trial 5)."""
    from llmkit.recipe import recipe_from_mapping

    content = base_mapping(recipe)
    for corner in ("low", "high"):
        values = {}
        for parameter in space:
            if parameter.kind == "choice":
                values[parameter.path] = parameter.choices[0 if corner == "low" else -1]
            else:
                number = getattr(parameter, corner)
                values[parameter.path] = int(number) if parameter.kind == "int" else number
        try:
            recipe_from_mapping(with_values(content, values))
        except LlmkitError as err:
            raise LlmkitError(f"recipe field `tune.space`: at the {corner} end of the space: {err}") from None


# --------------------------------------------------------------------------- the study


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


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
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


@dataclass
class Outcome:
    folder: Path
    best_number: int | None
    best_value: float | None
    baseline_value: float | None
    completed: int
    pruned: int
    failed: int
    seconds: float


def run(
    recipe: Recipe,
    trials: int,
    timeout_minutes: float | None = None,
    launch_options: LaunchOptions | None = None,
) -> Outcome:
    """Run (or continue) the study until it holds `trials` counted trials, then write its summary."""
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


def storage_url(target: Path) -> str:
    return f"sqlite:///{(target / 'study.db').resolve()}"


def stored_attrs(study: Any, trial: Any) -> dict[str, Any]:
    """The trial's user attributes as stored (a re-launched trial process writes them, not this one)."""
    return dict(study._storage.get_trial(trial._trial_id).user_attrs)


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- the summary


def trial_rows(study: Any) -> list[dict[str, Any]]:
    import optuna

    rows = []
    for trial in study.trials:
        state = trial.state
        name = "diverged" if state == optuna.trial.TrialState.FAIL and trial.user_attrs.get("diverged") else state.name
        intermediate = trial.intermediate_values
        last = intermediate[max(intermediate)] if intermediate else None
        rows.append(
            {
                "number": trial.number,
                "state": name.lower(),
                "value": trial.value,
                "last_intermediate": last,
                "pruned_at": trial.user_attrs.get("pruned_at"),
                "params": dict(trial.params),
                "baseline": bool(trial.user_attrs.get("baseline")),
                "run_dir": trial.user_attrs.get("run_dir"),
                "seconds": trial.user_attrs.get("seconds"),
            }
        )
    return rows


def summarize(recipe: Recipe, space: list[Parameter], study: Any, folder: Any, seconds: float) -> Outcome:
    """Print the table; write best.yaml, trials.json and tune.png into the tune folder."""
    import yaml

    from llmkit.console import say

    assert recipe.tune is not None
    rows = trial_rows(study)
    print_table(rows, recipe.tune.metric, space)
    complete = [row for row in rows if row["state"] == "complete"]
    best = None
    if complete:
        pick = min if recipe.tune.goal == "minimize" else max
        best = pick(complete, key=lambda row: row["value"])
        content = with_values(base_mapping(recipe), best["params"])
        header = (
            f"# best of {len(rows)} trial(s) of `llmkit tune` in {folder.target}: trial {best['number']}, "
            f"{recipe.tune.metric} = {best['value']:.6g}\n"
        )
        folder.write_text("best.yaml", header + yaml.safe_dump(content, sort_keys=False))
    folder.write_json("trials.json", {"metric": recipe.tune.metric, "direction": recipe.tune.goal, "trials": rows})
    plot(rows, recipe.tune.metric, folder.work / "tune.png", recipe.tune.goal)
    baseline = next((row for row in rows if row["baseline"] and row["state"] == "complete"), None)
    counts = {state: sum(row["state"] == state for row in rows) for state in ("complete", "pruned")}
    failed = len(rows) - counts["complete"] - counts["pruned"]
    if best is not None:
        gain = f" (the recipe as written, trial {baseline['number']}: {baseline['value']:.4g})" if baseline else ""
        say(f"best: trial {best['number']}, {recipe.tune.metric} = {best['value']:.4g}{gain}")
        say(f"wrote {folder.target / 'best.yaml'} (train it: llmkit finetune {folder.target / 'best.yaml'})")
    return Outcome(
        folder.target,
        best["number"] if best else None,
        best["value"] if best else None,
        baseline["value"] if baseline else None,
        counts["complete"],
        counts["pruned"],
        failed,
        seconds,
    )


def print_table(rows: list[dict[str, Any]], metric: str, space: list[Parameter]) -> None:
    from rich.table import Table

    from llmkit.console import rich_console

    table = Table(title=f"llmkit tune: {metric}")
    for name in ("trial", "state", metric, *(p.path for p in space), "seconds"):
        table.add_column(name, justify="right" if name not in ("state",) else "left")
    for row in rows:
        value = row["value"]
        if row["state"] == "pruned":
            last = row["last_intermediate"]
            shown = f"({last:.4g} at step {row['pruned_at']})" if last is not None else "-"
        else:
            shown = f"{value:.4g}" if isinstance(value, float) else "-"
        label = f"{row['number']}{' (recipe)' if row['baseline'] else ''}"
        params = [format_value(row["params"].get(p.path)) for p in space]
        seconds = f"{row['seconds']:.1f}" if isinstance(row["seconds"], float) else "-"
        table.add_row(label, row["state"], shown, *params, seconds)
    rich_console().print(table)


def plot(rows: list[dict[str, Any]], metric: str, path: Path, goal: str) -> None:
    """The objective per trial (pruned trials at their last intermediate value) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    done = [(row["number"], row["value"]) for row in rows if row["state"] == "complete"]
    pruned = [(row["number"], row["last_intermediate"]) for row in rows if row["state"] == "pruned"]
    pruned = [(n, v) for n, v in pruned if v is not None]
    if done:
        axes.plot(*zip(*done, strict=True), "o", label="complete")
        best, line = None, []
        for number, value in sorted(done):
            better = best is None or (value < best if goal == "minimize" else value > best)
            best = value if better else best
            line.append((number, best))
        axes.step(*zip(*line, strict=True), where="post", label="best so far")
    if pruned:
        axes.plot(*zip(*pruned, strict=True), "x", color="tab:red", label="pruned (last report)")
    axes.set_xlabel("trial")
    axes.set_ylabel(metric)
    axes.set_title(f"llmkit tune: {metric} ({goal})")
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    temporary = path.with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    temporary.replace(path)
