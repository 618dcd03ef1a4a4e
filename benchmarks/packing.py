"""Padding waste: llmkit's packed LM blocks and dynamically padded classification batches vs pad-to-max.

The batches on llmkit's side are the ones its training would see: recipe → `pipeline.setup` →
`task.preprocess` → `build_trainer(...).get_train_dataloader()` (llmkit's collator, the Trainer's sampler).
The baseline pads every example to `max_length` (the classic `padding="max_length"` recipe). Both sides run
the same training step (same model, forward + backward + AdamW) on their batches; what is compared is useful
(non-padding) tokens per second, or examples per second for classification.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Result, clock, data_dir, documents, interleaved, median, skipped


def trainer_batches(run: Any, prepared: Any, count: int, **overrides: Any) -> list[dict[str, Any]]:
    """The first `count` training batches exactly as llmkit's Trainer would draw and collate them."""
    from llmkit.pipeline import load_model
    from llmkit.trainer import build_trainer, training_arguments

    args = training_arguments(run.recipe, report_to="none", **overrides)
    trainer = build_trainer(run.task, run.recipe, args, load_model(run), run.tokenizer, prepared)
    batches = []
    for batch in trainer.get_train_dataloader():
        batches.append(dict(batch))
        if len(batches) == count:
            break
    return batches


def useful_fraction(batches: list[dict[str, Any]]) -> float:
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return real / sum(b["attention_mask"].numel() for b in batches)


def stepper(model: Any) -> Any:
    """One plain training step (forward, backward, AdamW) — the same for every kind of batch."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(batch: dict[str, Any]) -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def throughput(step: Any, batches: list[dict[str, Any]], unit: str) -> float:
    """Useful tokens (or examples) per second over the batches; the first batch is a warm-up."""
    step(batches[0])
    start = clock()
    for batch in batches[1:]:
        step(batch)
    seconds = clock() - start
    rest = batches[1:]
    amount = (
        sum(int(b["attention_mask"].sum()) for b in rest) if unit == "tokens" else sum(len(b["labels"]) for b in rest)
    )
    return amount / seconds


def pad_to_max(tokenizer: Any, texts: list[str], max_length: int, batch: int, count: int, extra: Any = None) -> list:
    """The baseline: every example padded (and truncated) to max_length, shuffled, in batches."""
    import random

    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length")
    rows = [{key: encoded[key][i] for key in encoded} for i in range(len(texts))]
    if extra is not None:
        for row, value in zip(rows, extra, strict=True):
            row["labels"] = value
    random.Random(0).shuffle(rows)
    return [rows[i : i + batch] for i in range(0, batch * count, batch)]


# --------------------------------------------------------------------------- causal LM


def lm(quick: bool, folder: Path) -> list[Result]:
    from transformers import DataCollatorForLanguageModeling

    from llmkit import pipeline
    from llmkit.recipe import recipe_from_mapping

    corpus, texts = documents()
    path = folder / "documents.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    block, batch, count = 128, 8, (8 if quick else 16)
    content = {
        "task": "clm",
        "model": {
            "from_config": {"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": block}
        },
        "tokenizer": {"train": {"kind": "bpe", "vocab_size": 4000}},
        "data": {"train": str(path), "max_length": block},
        "training": {"output_dir": str(folder / "lm"), "per_device_train_batch_size": batch, "seed": 0},
    }
    recipe = recipe_from_mapping(content)
    run = pipeline.setup(recipe)
    prepared = run.task.preprocess(recipe, run.raw, run.tokenizer)
    packed = trainer_batches(run, prepared, count)

    unpacked_recipe = recipe_from_mapping({**content, "data": {**content["data"], "packing": False}})
    unpacked_run = pipeline.Setup(unpacked_recipe, run.task, run.raw, run.config, run.tokenizer)
    dynamic = trainer_batches(unpacked_run, run.task.preprocess(unpacked_recipe, run.raw, run.tokenizer), 64)

    collate = DataCollatorForLanguageModeling(run.tokenizer, mlm=False)
    padded = [collate(rows) for rows in pad_to_max(run.tokenizer, texts, block, batch, count)]

    total_tokens = sum(len(ids) for ids in run.tokenizer(texts)["input_ids"]) + len(texts)  # + one EOS each
    kept = len(prepared.train) * block / total_tokens
    step = stepper(pipeline.load_model(run))
    rates = interleaved(
        {"llmkit": lambda: throughput(step, packed, "tokens"), "pad": lambda: throughput(step, padded, "tokens")},
        5,
    )
    fraction, baseline_fraction = useful_fraction(packed), useful_fraction(padded)
    details = {
        "corpus": corpus,
        "documents": len(texts),
        "block": block,
        "llmkit_useful_tokens_per_second": rates["llmkit"],
        "pad_to_max_useful_tokens_per_second": rates["pad"],
        "pad_to_max_useful_fraction": baseline_fraction,
        "dynamic_padding_useful_fraction": useful_fraction(dynamic),
        "corpus_tokens_kept_by_packing": kept,
    }
    return [
        Result(
            "LM packing: non-padding fraction of training tokens",
            fraction,
            baseline_fraction,
            unit="frac",
            goal=">= 0.99",
            key="packing_useful_fraction",
            score=fraction,
            note=f"{corpus} ({len(texts)} docs), block {block}; packing keeps {kept:.1%} of the corpus tokens; "
            f"dynamic padding (packing off) {useful_fraction(dynamic):.2f}",
            details=details,
        ),
        Result(
            "LM packing: useful tokens/s (vs pad-to-max)",
            median(rates["llmkit"]),
            median(rates["pad"]),
            unit="tok/s",
            goal=">= 2",
            key="packing_speedup",
            note="same GPT-2 2L/128d and training step on both sides",
            details=details,
        ),
    ]


# --------------------------------------------------------------------------- classification


def classification_recipe(folder: Path) -> tuple[dict[str, Any], str]:
    """SST-2 with the BERT tokenizer, or the repository's small review fixture with a trained WordPiece."""
    root = data_dir()
    sst2, vocab = (root / "sst2" / "train.tsv", root / "tokenizers" / "bert-base-uncased") if root else (None, None)
    common = {
        "task": "classification",
        "model": {
            "from_config": {
                "model_type": "bert",
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "hidden_size": 128,
                "intermediate_size": 512,
            }
        },
        "training": {"output_dir": str(folder / "cls"), "per_device_train_batch_size": 32, "seed": 0},
    }
    if sst2 is not None and sst2.is_file() and vocab is not None and vocab.is_dir():
        data = {"train": str(sst2), "columns": {"text": "sentence"}, "max_length": 128, "max_train_samples": 4000}
        return {**common, "tokenizer": {"name_or_path": str(vocab)}, "data": data}, "SST-2 (4000 rows), BERT tokenizer"
    from benchmarks.common import REPO

    fixture = REPO / "recipes" / "ci" / "data" / "reviews-train.jsonl"
    data = {"train": str(fixture), "columns": {"text": "sentence", "label": "sentiment"}, "max_length": 128}
    tokenizer = {"train": {"kind": "wordpiece", "vocab_size": 300, "min_frequency": 1}}
    return {**common, "tokenizer": tokenizer, "data": data}, "review fixture, trained WordPiece"


def classification(quick: bool, folder: Path) -> list[Result]:
    from transformers import DataCollatorWithPadding

    from llmkit import pipeline
    from llmkit.recipe import recipe_from_mapping

    content, what = classification_recipe(folder)
    recipe = recipe_from_mapping(content)
    run = pipeline.setup(recipe)
    prepared = run.task.preprocess(recipe, run.raw, run.tokenizer)
    count = min(6 if quick else 16, len(prepared.train) // 32)
    dynamic = trainer_batches(run, prepared, count)
    grouped = trainer_batches(run, prepared, count, train_sampling_strategy="group_by_length")
    texts = list(run.raw["train"]["text"])
    labels = list(prepared.train["labels"])
    collate = DataCollatorWithPadding(run.tokenizer)
    max_length = recipe.data.max_length
    padded = [collate(rows) for rows in pad_to_max(run.tokenizer, texts, max_length, 32, count, labels)]
    step = stepper(pipeline.load_model(run))
    rates = interleaved(
        {
            "dynamic": lambda: throughput(step, dynamic, "examples"),
            "grouped": lambda: throughput(step, grouped, "examples"),
            "pad": lambda: throughput(step, padded, "examples"),
        },
        3 if quick else 5,
    )
    details = {
        "data": what,
        "max_length": max_length,
        "examples_per_second": rates,
        "useful_fraction": {
            "dynamic": useful_fraction(dynamic),
            "group_by_length": useful_fraction(grouped),
            "pad_to_max": useful_fraction(padded),
        },
    }
    pad = median(rates["pad"])
    return [
        Result(
            "classification: dynamic padding examples/s (vs pad-to-max)",
            median(rates["dynamic"]),
            pad,
            unit="ex/s",
            key="classification_dynamic_padding_speedup",
            note=f"{what}; max_length {max_length}; BERT 2L/128d; "
            f"useful fraction {useful_fraction(dynamic):.2f} vs {useful_fraction(padded):.2f}",
            details=details,
        ),
        Result(
            "classification: + group_by_length examples/s (vs pad-to-max)",
            median(rates["grouped"]),
            pad,
            unit="ex/s",
            key="classification_group_by_length_speedup",
            note=f"recipe `training.train_sampling_strategy: group_by_length`; "
            f"useful fraction {useful_fraction(grouped):.2f}",
            details=details,
        ),
    ]


def run(quick: bool) -> list[Result]:
    with tempfile.TemporaryDirectory() as folder:
        results = lm(quick, Path(folder))
        try:
            results += classification(quick, Path(folder))
        except ImportError as err:
            results.append(skipped("classification: dynamic padding", str(err)))
        return results
