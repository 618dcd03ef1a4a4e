"""`llmkit check`: everything a run would do before its first step, shown instead of trained.

It runs the same validation and data probe as training (so any error a run would meet before its first step
shows up here, with the same one-line message), then prints what the model will be given: token lengths
before truncation, the features, three training examples decoded back to text with the tokens that carry a
loss marked, and the number of optimizer steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.console import rich_console
from llmkit.run import Run
from llmkit.streaming import is_streamed
from llmkit.tasks.mechanisms.packing import SHUFFLE_BUFFER, row_lengths
from llmkit.tasks.mechanisms.padding_free import packing_mode
from llmkit.trainer import training_arguments

if TYPE_CHECKING:
    from collections.abc import Callable

    from datasets import Dataset, DatasetDict
    from rich.console import Console
    from transformers import PreTrainedTokenizerBase

    from llmkit.recipe import Recipe
    from llmkit.tasks.base import Prepared

#: rows per split whose raw text is tokenized for the length statistics (enough for a stable p95)
LENGTH_SAMPLE = 20_000
LORA_LOW_LEARNING_RATE = 1e-4


def planned_steps(recipe: Recipe, train_rows: int, world_size: int = 1) -> int:
    """Optimizer steps the run will take: Trainer's own arithmetic, without building a Trainer."""
    training = recipe.training
    if training.max_steps > 0:
        return training.max_steps
    per_batch = training.per_device_train_batch_size * world_size
    drop_last = bool((training.model_extra or {}).get("dataloader_drop_last"))
    batches = train_rows // per_batch if drop_last else math.ceil(train_rows / per_batch)
    per_epoch = max(math.ceil(batches / training.gradient_accumulation_steps), 1)
    return math.ceil(training.num_train_epochs * per_epoch)


@dataclass
class Lengths:
    """A token-length distribution and how many rows are longer than `limit`."""

    rows: int
    min: int
    mean: float
    p50: float
    p95: float
    max: int
    over: int

    @classmethod
    def of(cls, lengths: Any, limit: int) -> Lengths:
        import numpy as np

        values = np.asarray(lengths, dtype=np.int64)
        if values.size == 0:
            return cls(0, 0, 0.0, 0.0, 0.0, 0, 0)
        return cls(
            rows=int(values.size),
            min=int(values.min()),
            mean=float(values.mean()),
            p50=float(np.percentile(values, 50)),
            p95=float(np.percentile(values, 95)),
            max=int(values.max()),
            over=int((values > limit).sum()),
        )


def feature_lengths(dataset: Dataset, limit: int) -> Lengths:
    """Lengths of the model inputs (after truncation or packing)."""
    return Lengths.of(row_lengths(dataset), limit)


def is_packed(dataset: Dataset) -> bool:
    """Packed features are fixed-size blocks (`data.packing`)."""
    import pyarrow as pa

    return pa.types.is_fixed_size_list(dataset.data.column("input_ids").type)


def text_lengths(
    raw: DatasetDict, roles: tuple[str, ...], tokenizer: PreTrainedTokenizerBase, limit: int
) -> dict[tuple[str, str], Lengths]:
    """(split, role) → token lengths of the raw text, before any truncation; `+`-joined roles for their sum."""
    result: dict[tuple[str, str], Lengths] = {}
    for split, dataset in raw.items():
        rows = dataset.select(range(min(len(dataset), LENGTH_SAMPLE)))
        per_role = {}
        for role in (r for r in roles if getattr(rows.features.get(r), "dtype", None) in ("string", "large_string")):
            texts = [text or "" for text in list(rows[role])]
            per_role[role] = [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
            result[split, role] = Lengths.of(per_role[role], limit)
        if len(per_role) > 1:
            together = [sum(values) for values in zip(*per_role.values(), strict=True)]
            result[split, "+".join(per_role)] = Lengths.of(together, limit)
    return result


def examples(
    features: Dataset,
    collator: Callable[[list[dict]], Any],
    render: Callable[[dict[str, Any], int], str],
    count: int = 3,
    limit: int = 600,
) -> list[str]:
    """The first training examples as the model receives them (after the task's collator, so random masking and
    label padding are applied), rendered by the task with what carries a loss inside [[ ]]."""
    if is_streamed(features):
        rows = [dict(row) for row in features.take(count)]
    else:
        rows = [dict(features[index]) for index in range(min(count, len(features)))]
    if not rows:
        return []
    batch = {key: value.tolist() if hasattr(value, "tolist") else value for key, value in collator(rows).items()}
    rendered = []
    for index in range(len(rows)):
        text = render(batch, index)
        rendered.append(text if len(text) <= limit else text[:limit] + "…")
    return rendered


def report(recipe: Recipe) -> None:
    """Validate, probe and preprocess like a run would, and print what training would see; no model is loaded."""
    console = rich_console()
    args = training_arguments(recipe)
    run = Run.prepare(recipe)
    prepared = run.features()
    say_recipe(console, run)
    streamed = is_streamed(prepared.train)
    if streamed:
        say_stream(console, run)
    else:
        length_table(console, run, prepared)
    feature_table(console, run, prepared)
    if prepared.train is not None:
        show_examples(console, run, prepared.train)
        rows = "streamed" if streamed else len(prepared.train)
        steps = planned_steps(run.recipe, 0 if streamed else len(prepared.train), args.world_size)
        training = run.recipe.training
        console.print(
            f"planned optimizer steps: {steps} ({rows} training features, batch "
            f"{training.per_device_train_batch_size} × {args.world_size} process(es) × accumulation "
            f"{training.gradient_accumulation_steps})",
            markup=False,
        )
    output = Path(run.recipe.training.output_dir)
    if output.is_dir() and any(output.iterdir()):
        console.print(
            f"note: {output} is not empty: training needs --overwrite (replace) or --resume latest", markup=False
        )


def say_recipe(console: Console, run: Run) -> None:
    """What the recipe resolved to, the defaults it took, and a LoRA learning rate that will barely move."""
    recipe = run.recipe
    model = recipe.model.name_or_path or f"{recipe.model.from_config.get('model_type')} built from config"
    console.print(f"recipe ok: task `{recipe.task}`, model {model}, tokenizer vocab {len(run.tokenizer)}", markup=False)
    for note in recipe.defaults_applied:
        console.print(f"note: using {note}", markup=False)
    if recipe.peft is not None and recipe.training.learning_rate < LORA_LOW_LEARNING_RATE:
        console.print(
            f"warning: training.learning_rate {recipe.training.learning_rate:g} is low for LoRA, which usually "
            f"needs 1e-4 to 5e-3 (its new weights start from zero)",
            markup=False,
        )


def length_table(console: Console, run: Run, prepared: Prepared) -> None:
    """Token lengths of the raw text before truncation, and what the task does with the rows that are longer."""
    limit = run.recipe.data.max_length
    sampled = any(len(dataset) > LENGTH_SAMPLE for dataset in run.raw.values())
    from rich.table import Table

    table = Table(title="tokens per row, before truncation" + (f" (first {LENGTH_SAMPLE} rows)" if sampled else ""))
    for column in ("split", "column", "rows", "min", "p50", "p95", "max", f"> {limit} tokens"):
        table.add_column(column, justify="left" if column in ("split", "column") else "right")
    for (split, role), stats in text_lengths(run.raw, run.task.text_roles(), run.tokenizer, limit).items():
        table.add_row(split, role, *_cells(stats), f"{stats.over} ({stats.over / max(stats.rows, 1):.0%})")
    console.print(table)
    if prepared.train is not None and is_packed(prepared.train):
        console.print(f"packing: long rows continue into the next block of {limit} tokens; no text is cut off")
    else:
        for note in run.task.check_notes(run.recipe, run.raw):
            console.print(note, markup=False, highlight=False)


def say_stream(console: Console, run: Run) -> None:
    """A streamed training set is not read ahead: no statistics that need all of it."""
    data = run.recipe.data
    packed = packing_mode(run.recipe, default=True)
    blocks = f"cut into blocks of {data.max_length} tokens" if packed else "one row per document"
    console.print(
        f"streaming: {data.train} is read as training consumes it, {blocks}, shuffled among {SHUFFLE_BUFFER} "
        "at a time; no length statistics (they would need the whole set)",
        markup=False,
        highlight=False,
    )


def feature_table(console: Console, run: Run, prepared: Prepared) -> None:
    from rich.table import Table

    table = Table(title="features (model inputs)")
    for column in ("split", "raw rows", "features", "min", "p50", "p95", "max tokens"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, features in (("train", prepared.train), ("eval", prepared.eval)):
        if features is not None and not is_streamed(features):
            stats = feature_lengths(features, run.recipe.data.max_length)
            table.add_row(split, str(len(run.raw[split])), *_cells(stats))
    console.print(table)


def show_examples(console: Console, run: Run, features: Dataset) -> None:
    console.print("examples (tokens the model learns to predict are inside [[ ]]):", markup=False)

    def render(batch: dict[str, Any], index: int) -> str:
        return run.task.render_example(batch, index, run.tokenizer, run.config)

    for index, text in enumerate(examples(features, run.task.collator(run.recipe, run.tokenizer), render)):
        console.print(f"  {index}: {text!r}", markup=False, highlight=False)


def _cells(stats: Lengths) -> list[str]:
    return [str(stats.rows), str(stats.min), f"{stats.p50:.0f}", f"{stats.p95:.0f}", str(stats.max)]
