"""`llmkit check`: validates like a run, prints token lengths before truncation (with how many rows are too long),
the features, three examples decoded with the learned tokens marked, and the planned steps — and trains nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from llmkit.check import Lengths, planned_steps
from llmkit.recipe import recipe_from_mapping
from tests.tiny_recipe import clm_recipe, invoke, tiny_bert, write_corpus, write_recipe

WIDE = {"COLUMNS": "200"}  # rich tables on one line each, whatever the terminal
LONG_ROWS = 7


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("llmkit check built a model")

    monkeypatch.setattr("llmkit.models.build_model", fail)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Short sentences, plus LONG_ROWS rows of 60 words (far over 32 tokens) in the training file."""
    root = tmp_path_factory.mktemp("check-data")
    write_corpus(root / "train.txt")
    long_row = " ".join(["the old man paints a small house near the school"] * 6) + "\n"
    with (root / "train.txt").open("a") as handle:
        handle.write(long_row * LONG_ROWS)
    write_corpus(root / "eval.txt", lines=30, seed=3)
    return root


def unpacked(data: Path, output: Path, **training: Any) -> dict[str, Any]:
    content = clm_recipe(data / "train.txt", output, **training)
    content["data"].pop("validation_split")
    content["data"].update(eval=str(data / "eval.txt"), packing=False)
    return content


def test_check_reports_lengths_truncation_examples_and_steps(data: Path, tmp_path: Path, no_model: None) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", unpacked(data, tmp_path / "out"))
    result = invoke("check", recipe, env=WIDE)
    assert result.exit_code == 0, (result.stderr, result.exception)
    out = result.stdout
    assert "recipe ok: task `clm`" in out
    train_text = re.search(r"│ train\s*│ text\s*│\s*(\d+) │.*│\s*(\d+) \(\d+%\) │", out)
    assert train_text, out
    assert int(train_text.group(1)) == 240 + LONG_ROWS and int(train_text.group(2)) == LONG_ROWS
    assert re.search(r"│ eval\s*│ text\s*│\s*30 │.*│\s*0 \(0%\) │", out), out
    assert "rows longer than 32 tokens are cut to fit" in out
    features = re.search(r"│ train\s*│\s*247 │\s*247 │.*│\s*(\d+) │\n", out)
    assert features and int(features.group(1)) == 32, out  # long rows were cut to max_length
    examples = re.findall(r"^  \d: '(.*)'$", out, re.MULTILINE)
    assert len(examples) == 3 and all(e.startswith("[[") and e.endswith("]]") for e in examples), out
    first_row = (data / "train.txt").read_text().splitlines(keepends=True)[0]
    assert examples[0] == "[[" + repr(first_row)[1:-1] + "]]"  # decoded back to the very text, all of it learned
    assert "planned optimizer steps: 30" in out
    assert not (tmp_path / "out").exists(), "check created the output folder"


def test_planned_steps_match_what_training_does(data: Path, tmp_path: Path) -> None:
    """Epoch-based, with gradient accumulation over an odd number of batches: check's number is Trainer's."""
    training = {
        "max_steps": -1,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 16,
        "gradient_accumulation_steps": 2,
        "eval_strategy": "no",
        "save_steps": 1000,
    }
    recipe = write_recipe(tmp_path / "r.yaml", unpacked(data, tmp_path / "out", **training))
    checked = invoke("check", recipe, env=WIDE)
    planned = int(re.search(r"planned optimizer steps: (\d+)", checked.stdout).group(1))
    assert planned == 2 * 8  # 247 rows / 16 = 16 batches (the last one short) → 8 steps per epoch
    trained = invoke("pretrain", recipe)
    assert trained.exit_code == 0, trained.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["global_step"] == planned


def test_check_marks_masked_tokens_for_mlm_and_labels_for_classification(tmp_path: Path, no_model: None) -> None:
    bert = tiny_bert(layers=2, hidden=64)
    text = write_corpus(tmp_path / "train.txt")
    mlm = clm_recipe(text, tmp_path / "mlm")
    mlm.update(task="mlm", model={"from_config": bert}, tokenizer={"train": {"kind": "wordpiece", "vocab_size": 200}})
    mlm["mlm"] = {"probability": 0.3}
    result = invoke("check", write_recipe(tmp_path / "mlm.yaml", mlm), env=WIDE)
    assert result.exit_code == 0, (result.stderr, result.exception)
    examples = re.findall(r"^  \d: '(.*)'$", result.stdout, re.MULTILINE)
    assert len(examples) == 3
    masked = re.findall(r"\[\[(.*?)\]\]", "".join(examples))
    assert masked and "[MASK]" not in "".join(masked), "masked positions show the tokens to predict"
    assert "packing: long rows continue" in result.stdout

    rows = [
        {"text": f"{w} film, truly {w}", "label": "pos" if w in ("great", "fine") else "neg"}
        for w in ("great", "awful", "fine", "dull") * 10
    ]
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    classify = clm_recipe(tmp_path / "reviews.jsonl", tmp_path / "cls")
    classify.update(
        task="classification",
        model={"from_config": bert},
        tokenizer={"train": {"kind": "wordpiece", "vocab_size": 200}},
    )
    result = invoke("check", write_recipe(tmp_path / "cls.yaml", classify), env=WIDE)
    assert result.exit_code == 0, (result.stderr, result.exception)
    labelled = re.findall(r"^  \d: '(.*)  → label \[\[(pos|neg)\]\]'$", result.stdout, re.MULTILINE)
    assert len(labelled) == 3, result.stdout
    for shown, label in labelled:
        assert ("great" in shown or "fine" in shown) == (label == "pos"), (shown, label)


def test_check_notes_a_non_empty_output_folder(data: Path, tmp_path: Path, no_model: None) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("previous run")
    result = invoke("check", write_recipe(tmp_path / "r.yaml", unpacked(data, tmp_path / "out")), env=WIDE)
    assert result.exit_code == 0
    assert "is not empty: training needs --overwrite" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["old.txt"]


def test_planned_steps_arithmetic() -> None:
    def recipe(**training: Any) -> Any:
        return recipe_from_mapping(clm_recipe("t.txt", "o", **{"max_steps": -1, **training}))

    assert planned_steps(recipe(max_steps=7), 1000) == 7
    assert planned_steps(recipe(num_train_epochs=3, per_device_train_batch_size=10), 95) == 30
    assert (
        planned_steps(recipe(num_train_epochs=1, per_device_train_batch_size=10, gradient_accumulation_steps=4), 95)
        == 3
    )
    assert planned_steps(recipe(num_train_epochs=0.5, per_device_train_batch_size=10), 100) == 5
    assert planned_steps(recipe(num_train_epochs=1, per_device_train_batch_size=10, dataloader_drop_last=True), 95) == 9
    assert planned_steps(recipe(num_train_epochs=1, per_device_train_batch_size=8), 95, world_size=2) == 6


def test_length_statistics() -> None:
    stats = Lengths.of([10, 20, 30, 40, 100], limit=30)
    assert (stats.rows, stats.min, stats.max, stats.over, stats.p50) == (5, 10, 100, 2, 30.0)
    assert Lengths.of([], limit=8).rows == 0
