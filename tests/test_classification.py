"""Classification end to end (tiny BERT and tiny GPT-2 from config, through the CLI), label handling, data errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from llmkit.errors import LlmkitError
from llmkit.recipe import recipe_from_mapping
from tests.conftest import REPO
from tests.tiny_recipe import invoke, one_thread, task_recipe, write_jsonl

REVIEWS_TRAIN = REPO / "recipes/ci/data/reviews-train.jsonl"
REVIEWS_EVAL = REPO / "recipes/ci/data/reviews-eval.jsonl"


def data_overrides() -> list[str]:
    return [f"data.train={REVIEWS_TRAIN}", f"data.eval={REVIEWS_EVAL}"]


@pytest.fixture(scope="module")
def bert_run(ci_run: Callable[[str], Path]) -> Path:
    """The shipped recipe's run (its bars and `eval --check` are test_recipes_contract.py's)."""
    return ci_run("tiny-bert-classification")


def test_bert_learns_string_labels_into_the_config(bert_run: Path) -> None:
    metrics = json.loads((bert_run / "metrics.json").read_text())
    assert 0 <= metrics["eval_f1"] <= 1
    config = json.loads((bert_run / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert config["problem_type"] == "single_label_classification"


def test_eval_reads_only_the_eval_data(bert_run: Path, tmp_path: Path) -> None:
    """Evaluating a trained run does not load (or need) the training set."""
    missing = tmp_path / "gone.jsonl"
    with one_thread():
        result = invoke(
            "eval",
            "ci/tiny-bert-classification",
            "--checkpoint",
            bert_run,
            f"data.train={missing}",
            f"data.eval={REVIEWS_EVAL}",
        )
    assert result.exit_code == 0, result.output
    assert json.loads((bert_run / "metrics.json").read_text())["eval_accuracy"] >= 0.9


def test_predict_reads_a_file_in_the_training_data_layout(bert_run: Path) -> None:
    """The run's `data.columns` map the file's own fields (`sentence`) to the task's roles."""
    result = invoke("predict", bert_run, "--file", REVIEWS_EVAL)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(records) > 10 and all(isinstance(r["text"], str) and r["text"] for r in records)


def test_predict_prints_label_names(bert_run: Path) -> None:
    result = invoke(
        "predict", bert_run, "--text", "the film was superb .", "--text", "i found the plot dull , really awful ."
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [row["label"] for row in rows] == ["positive", "negative"]
    assert all(0.33 < row["probability"] <= 1 for row in rows)


def test_gpt2_classifier_with_pad_token(ci_run: Callable[[str], Path]) -> None:
    run = ci_run("tiny-gpt2-classification")
    config = json.loads((run / "config.json").read_text())
    tokenizer = json.loads((run / "tokenizer_config.json").read_text())
    assert config["pad_token_id"] is not None and tokenizer["pad_token"] == "<|endoftext|>"


# --------------------------------------------------------------------------- labels, pairs, regression


def classifier(train: Path, eval_file: Path | None = None, **data: object) -> object:
    content = task_recipe(
        "classification",
        train,
        train.parent / "run",
        eval=eval_file,
        vocab_size=100,
        data={"max_length": 32, **data},
        training={"max_steps": 2},
    )
    return recipe_from_mapping(content)


def test_text_pairs_int_labels_and_dynamic_padding(tmp_path: Path) -> None:
    from llmkit import pipeline

    rows = [{"a": f"word{i} here", "b": "and a much longer second text " * (i % 3 + 1), "y": i % 3} for i in range(12)]
    recipe = classifier(
        write_jsonl(tmp_path / "pairs.jsonl", rows), columns={"text": "a", "text_pair": "b", "label": "y"}
    )
    run = pipeline.setup(recipe)
    assert run.config.id2label == {0: "0", 1: "1", 2: "2"}
    prepared = run.task.preprocess(recipe, run.raw, run.tokenizer)
    first = prepared.train[0]
    assert 1 in first["token_type_ids"], "the second text is encoded as segment B"
    assert first["labels"] == 0
    batch = run.task.collator(recipe, run.tokenizer)([prepared.train[i] for i in range(3)])
    lengths = [len(prepared.train[i]["input_ids"]) for i in range(3)]
    assert batch["input_ids"].shape[1] == max(lengths) < recipe.data.max_length  # padded per batch


def test_float_labels_make_a_regression_head(tmp_path: Path) -> None:
    from llmkit import pipeline

    rows = [{"text": f"score {i}", "label": i / 4} for i in range(8)]
    recipe = classifier(write_jsonl(tmp_path / "scores.jsonl", rows))
    run = pipeline.setup(recipe)
    assert run.config.problem_type == "regression" and run.config.num_labels == 1
    prepared = run.task.preprocess(recipe, run.raw, run.tokenizer)
    assert prepared.train[3]["labels"] == pytest.approx(0.75)


def test_missing_label_names_the_column_and_row(tmp_path: Path) -> None:
    from llmkit import pipeline

    rows = [{"text": "fine", "mood": "good"}, {"text": "bad", "mood": None}, {"text": "ok", "mood": "good"}]
    recipe = classifier(write_jsonl(tmp_path / "d.jsonl", rows), columns={"label": "mood"})
    with pytest.raises(LlmkitError, match=r"data column `mood` is empty in train row 1"):
        pipeline.setup(recipe)


def test_label_types_mixed_across_splits_are_refused(tmp_path: Path) -> None:
    from llmkit import pipeline

    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [{"text": "a", "label": "pos"}])
    with pytest.raises(LlmkitError, match=r"data column `label` mixes label types \(int and str\)"):
        pipeline.setup(classifier(train, evaluation))


def test_label_types_mixed_in_one_file_are_refused(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": "pos"}])
    from llmkit import pipeline

    with pytest.raises(LlmkitError, match="label"):
        pipeline.setup(classifier(train))
