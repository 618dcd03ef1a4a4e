"""`llmkit check`: everything a run would do before its first step, shown instead of trained."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from llmkit.recipe import Recipe


def planned_steps(recipe: Recipe, train_rows: int, world_size: int = 1) -> int:
    """Optimizer steps the run will take (what Trainer computes, without building it)."""
    training = recipe.training
    if training.max_steps > 0:
        return training.max_steps
    batches = math.ceil(train_rows / (training.per_device_train_batch_size * world_size))
    per_epoch = max(batches // training.gradient_accumulation_steps, 1)
    return math.ceil(training.num_train_epochs * per_epoch)


def length_stats(dataset: Dataset) -> dict[str, float]:
    import numpy as np
    import pyarrow.compute as pc

    lengths = pc.list_value_length(dataset.data.column("input_ids")).to_numpy()
    return {
        "rows": len(lengths),
        "min": int(lengths.min()),
        "mean": float(lengths.mean()),
        "p50": float(np.percentile(lengths, 50)),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
    }


def render_example(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, limit: int = 400) -> str:
    """Decode a feature back to text; tokens that carry a loss are shown inside [[ ]]."""
    ids = list(row["input_ids"])
    labels = row.get("labels")
    if not isinstance(labels, list) or len(labels) != len(ids):
        text = tokenizer.decode(ids)
        suffix = f"  → label {labels}" if labels is not None else ""
        return (text[:limit] + ("…" if len(text) > limit else "")) + suffix
    pieces, current, learned = [], [], None
    for token, label in zip(ids, labels, strict=True):
        is_learned = label != -100
        if learned is not None and is_learned != learned:
            pieces.append(_span(tokenizer.decode(current), learned))
            current = []
        current.append(token if not is_learned or label == token else label)
        learned = is_learned
    if current:
        pieces.append(_span(tokenizer.decode(current), bool(learned)))
    text = "".join(pieces)
    return text[:limit] + ("…" if len(text) > limit else "")


def _span(text: str, learned: bool) -> str:
    return f"[[{text}]]" if learned else text


def report(recipe: Recipe) -> None:
    from rich.console import Console
    from rich.table import Table

    from llmkit.pipeline import setup

    console = Console()
    run = setup(recipe)
    prepared = run.task.preprocess(recipe, run.raw, run.tokenizer)
    console.print(f"[bold]recipe ok[/bold]: task `{recipe.task}`, model "
                  f"{recipe.model.name_or_path or recipe.model.from_config}, tokenizer vocab {len(run.tokenizer)}")
    table = Table(title="data")
    for column in ("split", "raw rows", "features", "min", "mean", "p50", "p95", "max tokens"):
        table.add_column(column)
    for split, features in (("train", prepared.train), ("eval", prepared.eval)):
        if features is None:
            continue
        stats = length_stats(features)
        table.add_row(split, str(len(run.raw[split])), str(stats["rows"]), str(stats["min"]), f"{stats['mean']:.1f}",
                      f"{stats['p50']:.0f}", f"{stats['p95']:.0f}", str(stats["max"]))
    console.print(table)
    if prepared.train is not None:
        console.print("[bold]examples[/bold] (tokens with a loss inside [[ ]]):")
        for index in range(min(3, len(prepared.train))):
            console.print(f"  {index}: {render_example(prepared.train[index], run.tokenizer)!r}")
        steps = planned_steps(recipe, len(prepared.train))
        console.print(f"planned optimizer steps: {steps} "
                      f"(batch {recipe.training.per_device_train_batch_size} × accumulation "
                      f"{recipe.training.gradient_accumulation_steps}, per process)")
