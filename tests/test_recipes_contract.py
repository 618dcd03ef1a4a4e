"""The contract every shipped CI recipe keeps, whatever its task: it trains through the CLI, meets each of its
`expect:` bars, `llmkit eval --check` agrees, and `llmkit predict` answers its own eval data's first row (the
target columns removed) with one JSON line. The recipes are globbed when the tests are collected: a new task
adds a recipe to `recipes/ci/`, not a test file. Recipes reading real data under $LLMKIT_DATA_DIR are `slow`;
a recipe with a `tune:` section is run through `llmkit tune` (one trial: the recipe as written)."""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import DATA_DIR, REPO
from tests.tiny_recipe import invoke, one_thread

RECIPES = sorted((REPO / "recipes" / "ci").glob("*.yaml"))
BARS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


def raw_recipe(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return content if isinstance(content, dict) else {}


def reads_real_data(content: dict[str, Any]) -> bool:
    """Data under $LLMKIT_DATA_DIR (written as the variable or as the folder itself)."""
    data = content.get("data") if isinstance(content.get("data"), dict) else {}
    paths = [str(data.get(key, "")) for key in ("train", "eval")]
    return any("LLMKIT_DATA_DIR" in path or path.startswith(str(DATA_DIR)) for path in paths)


def recipe_param(path: Path) -> Any:
    marks = [pytest.mark.integration]
    if reads_real_data(raw_recipe(path)):
        marks.append(pytest.mark.slow)
    return pytest.param(path, marks=marks, id=path.stem)


def gate(value: float, bar: str) -> bool:
    """`>= 0.85` → value >= 0.85 (parsed here, not by llmkit, so a wrong parse there cannot pass the bar)."""
    found = re.fullmatch(r"\s*(>=|<=|>|<|==)\s*(\S+)\s*", bar)
    assert found, f"malformed expect bar {bar!r}"
    return BARS[found.group(1)](value, float(found.group(2)))


def first_eval_input(recipe: Any) -> dict[str, Any]:
    """The recipe's own first eval row as a user would give it to `predict`: its columns, the target ones
    removed. The eval data is read as training reads it (a task's own file layout included)."""
    from llmkit.data import load_raw
    from llmkit.tasks import TASKS

    task = TASKS[recipe.task]
    raw = load_raw(recipe.data, reader=task.read_file)
    split = raw["eval"] if "eval" in raw else raw["train"]
    targets: set[str] = set()
    for role in task.target_roles:
        column = recipe.data.columns.get(role, role)
        targets.update(column if isinstance(column, list) else [column])
    row = {name: value for name, value in split[0].items() if name not in targets}
    assert row, f"the first eval row of {recipe.data.eval or recipe.data.train} has only target columns"
    return row


def tune_once(path: Path, run: Path) -> Path:
    """`llmkit tune` for one trial (trial 0 is the recipe as written); returns that trial's run folder."""
    result = invoke("tune", path, f"training.output_dir={run}", "--trials", "1")
    assert result.exit_code == 0, result.output[-3000:]
    folder = Path(f"{run}-tune")
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best.get("tune") is None and best["task"], "best.yaml must be a plain recipe"
    return folder / "trial-0000"


@pytest.mark.parametrize("path", [recipe_param(path) for path in RECIPES])
def test_ci_recipe_trains_meets_its_bars_evaluates_and_predicts(
    path: Path, tmp_path: Path, ci_run: Callable[[str], Path]
) -> None:
    from llmkit.recipe import load_recipe

    content = raw_recipe(path)
    assert content.get("task"), f"{path.name}: not a recipe mapping with a task"
    if reads_real_data(content) and not DATA_DIR.is_dir():
        pytest.skip(f"shared data folder {DATA_DIR} is absent")
    with one_thread():
        trained = tune_once(path, tmp_path / "run") if content.get("tune") else ci_run(path.stem)
        metrics = json.loads((trained / "metrics.json").read_text())
        recipe = load_recipe(path, [f"training.output_dir={trained}"])
        missed = {name: (metrics.get(name), bar) for name, bar in recipe.expect.items()}
        missed = {name: got for name, got in missed.items() if got[0] is None or not gate(float(got[0]), got[1])}
        assert not missed, f"{path.name}: bars missed (value, bar): {missed}"

        checked = invoke("eval", path, f"training.output_dir={trained}", "--check")
        assert checked.exit_code == 0, checked.output[-3000:]

        inputs = tmp_path / "inputs.jsonl"
        inputs.write_text(json.dumps(first_eval_input(recipe), default=str) + "\n", encoding="utf-8")
        predicted = invoke("predict", trained, "--file", inputs)
    assert predicted.exit_code == 0, predicted.output[-3000:]
    lines = [line for line in predicted.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, predicted.stdout[-2000:]
    record = json.loads(lines[0])
    assert isinstance(record, dict) and record, lines[0]
