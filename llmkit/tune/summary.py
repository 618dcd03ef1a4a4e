"""The end of `llmkit tune`: the table of trials, `best.yaml` (the recipe with the best values, without
`tune:`), `trials.json` and `tune.png`, and the outcome the command reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.tune.space import Parameter, base_mapping, format_value, with_values

if TYPE_CHECKING:
    from llmkit.recipe import Recipe


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
