"""Data parallelism, task by task: 2 processes × batch b train the same model as 1 process × batch 2b.

For every task (and LoRA on an encoder and a decoder), the same recipe runs once in this process and once
as `--num-processes 2 --cpu`, with the same seed and dropout off. The logged loss and grad norm of every
step, the final eval metrics and `predictions.jsonl` must agree: this catches a loss scaled by the world
size (the Trainer multiplies losses it expects to be divided by the global token count), a token mean
taken per process, masks or generation batches that depend on the process count, and distributed
evaluation that loses, repeats or reorders examples. Some rows also accumulate gradients over 2 steps.

`pytest -s` prints the largest relative differences of each row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.scale_helpers import NO_DROPOUT, log_history, losses, run_llmkit, train_in_process, write_recipe

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "recipes" / "ci" / "data"
TOLERANCE = 1e-4

BERT = {
    "model_type": "bert",
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 128, **NO_DROPOUT}
T5 = {
    "model_type": "t5",
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 2,
    "d_model": 32,
    "d_kv": 16,
    "d_ff": 64,
    "dropout_rate": 0.0,
}
WORDPIECE = {"train": {"kind": "wordpiece", "vocab_size": 300, "min_frequency": 1}}
BPE = {"train": {"kind": "bpe", "vocab_size": 400, "min_frequency": 1}}


@dataclass(frozen=True)
class Row:
    """One task's parity check: its recipe (without `training:`), the command, and how the batch is split."""

    name: str
    command: str
    recipe: Callable[[Path], dict[str, Any]]
    batch: int = 8  # one process's batch; two processes take batch / (2 × accumulation) each
    accumulation: int = 1
    predictions: bool = False
    needs: tuple[str, ...] = field(default=())
    #: generation rows learn slowly enough that outputs still differ from example to example
    learning_rate: float = 3.0e-3


def text_recipe(task: str, model: dict, tokenizer: dict) -> Callable[[Path], dict[str, Any]]:
    """Sentences of different lengths, unpacked: the processes' batches hold different numbers of tokens,
    which is where a per-process token mean and the global one part (16 eval rows: whole eval batches)."""

    def recipe(base: Path) -> dict[str, Any]:
        return {
            "task": task,
            "model": {"from_config": model},
            "tokenizer": tokenizer,
            "data": {
                "train": str(DATA / "reviews-train.jsonl"),
                "eval": str(DATA / "reviews-eval.jsonl"),
                "columns": {"text": "sentence"},
                "packing": False,
                "max_length": 32,
                "max_eval_samples": 16,
            },
        }

    return recipe


def reviews(model: dict | None, tokenizer: dict | None, labels: str = "sentiment") -> Callable[[Path], dict]:
    def recipe(base: Path) -> dict[str, Any]:
        data = {"train": str(DATA / "reviews-train.jsonl"), "eval": str(DATA / "reviews-eval.jsonl")}
        if labels == "score":
            data = float_labels(base.parent)
        content: dict[str, Any] = {
            "task": "classification",
            "model": {"from_config": model} if model is not None else {"name_or_path": str(base)},
            "data": {**data, "columns": {"text": "sentence", "label": labels}, "max_length": 32},
        }
        if tokenizer is not None:
            content["tokenizer"] = tokenizer
        return content

    return recipe


def float_labels(folder: Path) -> dict[str, str]:
    """The reviews with a sentiment score (0, 0.5, 1) instead of a class: a regression task."""
    score = {"negative": 0.0, "neutral": 0.5, "positive": 1.0}
    paths = {}
    for split in ("train", "eval"):
        path = folder / f"scores-{split}.jsonl"
        if not path.exists():
            rows = [json.loads(line) for line in (DATA / f"reviews-{split}.jsonl").read_text().splitlines()]
            path.write_text("".join(json.dumps({**r, "score": score[r["sentiment"]]}) + "\n" for r in rows))
        paths[split] = str(path)
    return paths


def council(model: dict, max_length: int) -> Callable[[Path], dict]:
    def recipe(base: Path) -> dict[str, Any]:
        return {
            "task": "summarization",
            "model": {"from_config": model},
            "tokenizer": BPE,
            "data": {
                "train": str(DATA / "council-train.jsonl"),
                "eval": str(DATA / "council-eval.jsonl"),
                "max_length": max_length,
                "max_eval_samples": 16,
            },
            "summarization": {"max_target_length": 16},
            # 16 prompts in batches of 5: the processes get unequal shares (10 and 6)
            "generation": {"max_new_tokens": 6, "batch_size": 5},
        }

    return recipe


def people(model: dict | None, tokenizer: dict | None) -> Callable[[Path], dict]:
    def recipe(base: Path) -> dict[str, Any]:
        generative = model is None or model.get("model_type") == "gpt2"
        data: dict[str, Any] = {
            "train": str(DATA / "people-train.json"),
            "eval": str(DATA / "people-eval.json"),
            "max_eval_samples": 16 if generative else 21,
        }
        if generative:
            data.update(max_length=72)
            options: dict[str, Any] = {"max_target_length": 6}
        else:  # extractive: 21 questions, windows that do not fill the last eval batch of both processes
            # never the null answer: every question gets its own best span, so a misplaced one shows
            data.update(max_length=48)
            options = {"doc_stride": 12, "version_2_with_negative": True, "null_score_diff_threshold": 1.0e9}
        content: dict[str, Any] = {
            "task": "qa",
            "model": {"from_config": model} if model is not None else {"name_or_path": str(base)},
            "data": data,
            "qa": options,
            "generation": {"max_new_tokens": 6, "batch_size": 5},
        }
        if tokenizer is not None:
            content["tokenizer"] = tokenizer
        return content

    return recipe


DROPOUT_OFF = {
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "gpt2": NO_DROPOUT,
    "t5": {"dropout_rate": 0.0},
}


def shipped(name: str, **generation: int) -> Callable[[Path], dict]:
    """A shipped CI recipe (data paths made absolute) with dropout off and 16 eval rows: a new task's row is
    its CI recipe."""

    def recipe(base: Path) -> dict[str, Any]:
        content = yaml.safe_load((REPO / "recipes" / "ci" / f"{name}.yaml").read_text())
        content.pop("training"), content.pop("expect", None)
        model = content["model"]["from_config"]
        content["model"]["from_config"] = {**model, **DROPOUT_OFF[model["model_type"]]}
        data = content["data"]
        data.update(train=str(DATA.parent / data["train"]), eval=str(DATA.parent / data["eval"]), max_eval_samples=16)
        if generation:
            content["generation"] = {**content.get("generation", {}), **generation}
        return content

    return recipe


def lora(inner: Callable[[Path], dict]) -> Callable[[Path], dict]:
    def recipe(base: Path) -> dict[str, Any]:
        content = inner(base)
        content["model"] = {"name_or_path": str(base)}
        content.pop("tokenizer", None)
        content["peft"] = {"r": 4, "alpha": 8, "dropout": 0.0}
        return content

    return recipe


ROWS = [
    Row("clm", "pretrain", text_recipe("clm", GPT2, BPE)),
    Row("mlm", "pretrain", text_recipe("mlm", BERT, WORDPIECE), 8, 2),
    Row("classification", "finetune", reviews(BERT, WORDPIECE)),
    Row("regression", "finetune", reviews({**GPT2, "n_positions": 64}, BPE, labels="score")),
    Row("summarization-gpt2", "finetune", council(GPT2, 96), predictions=True, learning_rate=3e-4),
    Row("summarization-t5", "finetune", council(T5, 64), 8, 2, predictions=True, learning_rate=3e-4),
    Row("extractive-qa", "finetune", people(BERT, WORDPIECE), predictions=True),
    Row("generative-qa", "finetune", people(GPT2, BPE), predictions=True, learning_rate=3e-4),
    Row("token-classification-bert", "finetune", shipped("tiny-bert-token-classification"), predictions=True),
    Row("multiple-choice-bert", "finetune", shipped("tiny-bert-multiple-choice"), predictions=True),
    Row("multiple-choice-gpt2", "finetune", shipped("tiny-gpt2-multiple-choice"), 8, 2, predictions=True),
    Row("translation-gpt2", "finetune", shipped("tiny-gpt2-translation", batch_size=5), predictions=True),
    Row("chat-gpt2", "finetune", shipped("tiny-gpt2-chat", batch_size=5, max_new_tokens=8), predictions=True),
    Row("lora-classification-bert", "finetune", lora(reviews(None, None)), needs=("bert",)),
    Row("lora-generative-qa-gpt2", "finetune", lora(people(None, None)), 8, 2, True, ("gpt2",), 1e-3),
]


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Tiny checkpoints for the LoRA rows (a base to adapt), made on first use."""
    made: dict[str, Path] = {}

    def base(kind: str) -> Path:
        if kind not in made:
            output = tmp_path_factory.mktemp(f"{kind}-base") / "base"
            task, model, tokenizer = ("mlm", BERT, WORDPIECE) if kind == "bert" else ("clm", GPT2, BPE)
            content = text_recipe(task, model, tokenizer)(output)
            content["training"] = {"output_dir": str(output), "max_steps": 2, "save_strategy": "no", "seed": 3}
            content["training"]["report_to"] = "none"
            train_in_process(write_recipe(output.parent / "base.yaml", content))
            made[kind] = output
        return made[kind]

    return base


def training(row: Row, output: Path, processes: int) -> dict[str, Any]:
    batch, accumulation = row.batch, row.accumulation if processes > 1 else 1
    return {
        "output_dir": str(output),
        "max_steps": 5,
        "per_device_train_batch_size": batch // (processes * accumulation),
        "gradient_accumulation_steps": accumulation,
        "per_device_eval_batch_size": batch // processes,  # both runs see the same global eval batches
        "learning_rate": row.learning_rate,
        # Weights with no true gradient (the span head's bias, attention key biases: constants that cancel in a
        # softmax) get float noise, which Adam's default eps (1e-8) turns into full-size steps that differ
        # with the summation order; they change no loss or answer, only the reported span scores.
        "adam_epsilon": 1.0e-6,
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 11,
        "report_to": "none",
    }


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def compared_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Results, not timings: eval_* (but runtime and throughput), perplexity, train_loss."""
    timing = ("_runtime", "_per_second", "_preparation_time")
    return {
        key: float(value)
        for key, value in metrics.items()
        if (key.startswith("eval_") or key in ("perplexity", "train_loss")) and not key.endswith(timing)
    }


PREDICTED = ("answer", "summary", "tags", "label", "target", "reply")


def predicted(record: dict[str, Any]) -> Any:
    """What the model wrote in a predictions.jsonl record (the field named after the task's target role)."""
    return next(record[key] for key in PREDICTED if key in record)


def without_floats(value: Any) -> Any:
    if isinstance(value, float):
        return None
    if isinstance(value, dict):
        return {key: without_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_floats(item) for item in value]
    return value


def floats_of(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [number for item in items for number in floats_of(item)]


def read_predictions(output: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_two_processes_train_and_evaluate_like_one(row: Row, tmp_path: Path, bases: Callable[[str], Path]) -> None:
    base = bases(row.needs[0]) if row.needs else tmp_path
    one, two = tmp_path / "one", tmp_path / "two"
    single = write_recipe(tmp_path / "one.yaml", {**row.recipe(base), "training": training(row, one, 1)})
    double = write_recipe(tmp_path / "two.yaml", {**row.recipe(base), "training": training(row, two, 2)})
    metrics, reference = train_in_process(single)
    result = run_llmkit(row.command, double, "--num-processes", "2", "--cpu")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    facts = json.loads((two / "run.json").read_text())
    assert (facts["world_size"], facts["global_train_batch_size"], facts["strategy"]) == (2, row.batch, "DDP")
    assert result.stdout.count("strategy: DDP, 2 processes on 1 machine") == 1

    history = log_history(two)
    expected, got = losses(reference), losses(history)
    assert sorted(got) == sorted(expected) == list(range(1, 6))
    norms = {e["step"]: e["grad_norm"] for e in reference if "grad_norm" in e}
    got_norms = {e["step"]: e["grad_norm"] for e in history if "grad_norm" in e}
    assert sorted(got_norms) == sorted(norms) == list(range(1, 6))
    loss_difference = max(relative(got[s], expected[s]) for s in expected)
    norm_difference = max(relative(got_norms[s], norms[s]) for s in norms)

    parallel_metrics = json.loads((two / "metrics.json").read_text())
    wanted, found = compared_metrics(metrics), compared_metrics(parallel_metrics)
    assert sorted(found) == sorted(wanted) and wanted
    metric_difference = max(relative(found[k], wanted[k]) for k in wanted)
    print(
        f"\nparity {row.name}: max relative difference loss {loss_difference:.1e}, grad norm {norm_difference:.1e}, "
        f"metrics {metric_difference:.1e} ({', '.join(f'{k}={wanted[k]:.4g}' for k in sorted(wanted))})"
    )
    assert expected[5] != pytest.approx(expected[1], rel=1e-3), "the loss did not move: nothing was compared"
    assert all(math.isfinite(v) for v in [*expected.values(), *norms.values()])
    assert loss_difference <= TOLERANCE, {s: (expected[s], got[s]) for s in expected}
    assert norm_difference <= TOLERANCE, {s: (norms[s], got_norms[s]) for s in norms}
    assert metric_difference <= TOLERANCE, {k: (wanted[k], found[k]) for k in wanted}

    if row.predictions:
        mine, theirs = read_predictions(one), read_predictions(two)
        # complete, in order, no repeats; scores are rounded (to 4-5 decimals), so float noise may flip the last
        assert [without_floats(r) for r in theirs] == [without_floats(r) for r in mine]
        assert floats_of(theirs) == pytest.approx(floats_of(mine), abs=2e-4)
        written = [json.dumps(predicted(record)) for record in mine]
        if not row.needs:  # (an adapter on a 2-step base writes one string everywhere; test_distributed checks order)
            assert len(set(written)) > 1, f"all predictions alike: their order is not seen ({written[0]!r})"
        if "qa" in row.name:
            ids = [record["id"] for record in theirs]
            assert len(ids) == len(set(ids)) == (16 if "generative" in row.name else 21)


def test_mlm_masks_are_drawn_per_example_whatever_the_batch() -> None:
    """One seeded generator per process gave every process the same mask positions, and masks that changed
    with the batch split; each example's mask now comes from (seed, epoch, its tokens) alone."""
    from llmkit.models import train_tokenizer
    from llmkit.recipe import TokenizerTrainSection, recipe_from_mapping
    from llmkit.tasks.mlm import MaskedLM

    texts = [json.loads(line)["sentence"] for line in (DATA / "reviews-train.jsonl").read_text().splitlines()]
    tokenizer = train_tokenizer(TokenizerTrainSection(kind="wordpiece", vocab_size=300, min_frequency=1), texts)
    recipe = recipe_from_mapping(
        {"task": "mlm", "model": {"from_config": BERT}, "data": {"train": "x.txt"}, "training": {"output_dir": "o"}}
    )
    special = tokenizer.get_special_tokens_mask
    features = [
        {"input_ids": ids, "special_tokens_mask": special(ids, already_has_special_tokens=True)}
        for ids in tokenizer(texts[:8])["input_ids"]
    ]
    collate = MaskedLM().collator(recipe, tokenizer)

    def masks(batch: list[dict]) -> list[list[int]]:
        labels = collate(batch)["labels"].tolist()
        return [row[: len(f["input_ids"])] for row, f in zip(labels, batch, strict=True)]

    together = masks(features)
    assert masks(features[:4]) + masks(features[4:]) == together  # 1 process × 8 = 2 processes × 4
    assert masks(features[4:]) != masks(features[:4])  # not one draw repeated for every process
    assert sum(label != -100 for row in together for label in row) > 0
    collate.epoch = 1
    assert masks(features) != together  # dynamic: a new draw each epoch
