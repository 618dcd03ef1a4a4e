"""`llmkit predict`: run a trained run folder on new inputs, using the task that trained it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError


def read_inputs(run_dir: Path, texts: list[str], file: Path | None) -> list[dict[str, Any]]:
    """Inputs as rows of task roles: --text gives the first role; a .jsonl file gives whole rows."""
    if bool(texts) == (file is not None):
        raise LlmkitError("give either --text (one or more) or --file, not both and not neither")
    if file is None:
        if not all(text.strip() for text in texts):
            raise LlmkitError("--text is empty: give the text to run the model on")
        return [{"text": text} for text in texts]
    if not file.is_file():
        raise LlmkitError(f"--file {file}: file not found")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise LlmkitError(f"--file {file}: not UTF-8 text") from None
    if file.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise LlmkitError(f"--file {file}: line {number} is not JSON") from None
            rows.append(row if isinstance(row, dict) else {"text": row})
        return rows
    return [{"text": line} for line in lines if line.strip()]


def predict_rows(run_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from llmkit.pipeline import load_model, recipe_for_checkpoint, setup_for_inference
    from llmkit.recipe import load_recipe

    recipe_path = run_dir / "recipe.yaml"
    if not recipe_path.is_file():
        raise LlmkitError(f"{run_dir} is not a run folder (no recipe.yaml)")
    recipe = recipe_for_checkpoint(load_recipe(recipe_path), run_dir)
    run = setup_for_inference(recipe)
    model = load_model(run)
    return run.task.predict(model, run.tokenizer, as_roles(rows, recipe.data.columns), recipe)


def as_roles(rows: list[dict[str, Any]], columns: dict[str, str]) -> list[dict[str, Any]]:
    """Rows keyed by task role: a file in the training data's own layout (`sentence`) works as is."""
    role_of = {column: role for role, column in columns.items()}
    return [{role_of.get(key, key): value for key, value in row.items()} for row in rows]
