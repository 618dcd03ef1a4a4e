"""Question answering: context windows and span labels, n-best / SQuAD v2 post-processing, data errors, mode
selection, and extractive (tiny BERT) and generative (tiny GPT-2) runs end to end through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from llmkit.errors import LlmkitError
from llmkit.recipe import recipe_from_mapping
from llmkit.tasks import TASKS
from tests.conftest import REPO
from tests.tiny_recipe import invoke, task_recipe, write_jsonl

PEOPLE_TRAIN = REPO / "recipes/ci/data/people-train.json"
PEOPLE_EVAL = REPO / "recipes/ci/data/people-eval.json"
DATA = [f"data.train={PEOPLE_TRAIN}", f"data.eval={PEOPLE_EVAL}"]


def qa_recipe(train: Path, **qa: object):
    content = task_recipe(
        "qa",
        train,
        train.parent / "run",
        data={"max_length": 24},
        training={"max_steps": 2},
        qa={"doc_stride": 8, **qa},
    )
    return recipe_from_mapping(content)


# --------------------------------------------------------------------------- windows and spans


def test_long_context_windows_label_the_answer_where_it_is(tmp_path: Path) -> None:
    from llmkit import pipeline

    context = " ".join(f"Filler sentence number {i} here." for i in range(8)) + " Alice lives in Lisbon. The end."
    row = {
        "question": "Where does Alice live?",
        "context": context,
        "answers": {"text": ["Lisbon"], "answer_start": [context.index("Lisbon")]},
    }
    recipe = qa_recipe(write_jsonl(tmp_path / "train.jsonl", [row]))
    run = pipeline.setup(recipe)
    windows = list(run.task.preprocess(recipe, run.raw, run.tokenizer).train)
    assert len(windows) > 2, "a context longer than max_length becomes several overlapping windows"
    found = []
    for window in windows:
        assert len(window["input_ids"]) <= recipe.data.max_length
        start, end = window["start_positions"], window["end_positions"]
        if start == 0:
            assert end == 0  # the answer is not in this window: both pointers on [CLS]
        else:
            found.append(run.tokenizer.decode(window["input_ids"][start : end + 1]))
    assert found and set(found) == {"lisbon"}


def test_best_span_search_respects_length_order_and_v2_threshold() -> None:
    from datasets import Dataset

    from llmkit.tasks.qa.extractive import best_spans

    context = "Paris is in France"
    offsets = [None, None, [0, 5], [6, 8], [9, 11], [12, 18], None]  # [CLS] q [SEP]-like layout
    features = Dataset.from_dict({"example_index": [0], "offset_mapping": [offsets]})
    start = np.array([[1.0, 0, 5.0, 0, 0, 0, 9.0]])  # index 6 is not context: never an answer
    end = np.array([[1.0, 0, 0.5, 0, 0, 4.0, 9.0]])

    def run(version_2: bool = False, **qa: object) -> str:
        recipe = qa_recipe(Path("/nonexistent.jsonl"), **qa)
        return best_spans([context], features, start, end, recipe, version_2=version_2)[0][0]

    assert run() == "Paris is in France"  # 5 + 4 beats every other valid span
    assert run(max_answer_length=2) == "Paris"  # the 4-token span is too long now
    assert run(version_2=True) == "Paris is in France"  # null score 2 loses to 9


def test_v2_no_answer_when_the_null_score_wins() -> None:
    from datasets import Dataset

    from llmkit.tasks.qa.extractive import best_spans

    features = Dataset.from_dict({"example_index": [0, 0], "offset_mapping": [[None, [0, 5]], [None, [6, 8]]]})
    start = np.array([[3.0, 1.0], [6.0, 0.5]])
    end = np.array([[3.0, 1.0], [6.0, 0.5]])
    recipe = qa_recipe(Path("/x.jsonl"))
    # null score = the smallest over the windows (6.0); best span 2.0 → diff 4
    assert best_spans(["Paris is"], features, start, end, recipe, version_2=True)[0] == [""]
    assert best_spans(["Paris is"], features, start, end, recipe, version_2=False)[0] == ["Paris"]
    lenient = qa_recipe(Path("/x.jsonl"), null_score_diff_threshold=5.0)
    assert best_spans(["Paris is"], features, start, end, lenient, version_2=True)[0] == ["Paris"]


# --------------------------------------------------------------------------- data errors and modes


def test_answer_start_that_misses_the_answer_names_the_row(tmp_path: Path) -> None:
    from llmkit import pipeline

    good = {
        "id": "a1",
        "question": "Who?",
        "context": "Alice lives here.",
        "answers": {"text": ["Alice"], "answer_start": [0]},
    }
    bad = {
        "id": "b2",
        "question": "Where?",
        "context": "Alice lives here.",
        "answers": {"text": ["here"], "answer_start": [3]},
    }
    recipe = qa_recipe(write_jsonl(tmp_path / "train.jsonl", [good, bad]))
    run = pipeline.setup(recipe)
    with pytest.raises(LlmkitError, match=r"train row 1 \(id b2\), answer_start 3 does not point at the answer 'here'"):
        run.task.preprocess(recipe, run.raw, run.tokenizer)


def test_extractive_qa_on_gpt2_suggests_generative(tmp_path: Path) -> None:
    result = invoke(
        "check", "ci/tiny-gpt2-generative-qa", "qa.mode=extractive", *DATA, f"training.output_dir={tmp_path}"
    )
    assert result.exit_code == 2
    assert "extractive QA needs an encoder" in result.output and "qa.mode: generative" in result.output


def test_generative_qa_on_bert_suggests_extractive(tmp_path: Path) -> None:
    result = invoke("check", "ci/tiny-bert-qa", "qa.mode=generative", *DATA)
    assert result.exit_code == 2
    assert "encoder-only" in result.output and "qa.mode: extractive" in result.output


def test_squad_fixture_flat_layout_loads(data_dir: Path) -> None:
    from llmkit.data import load_raw
    from llmkit.recipe import DataSection

    raw = load_raw(
        DataSection(train=str(data_dir / "hf-example-fixtures/SQUAD/sample.json")), reader=TASKS["qa"].read_file
    )
    rows = raw["train"]
    assert len(rows) == 14 and sum(1 for a in rows["answers"] if not a["text"]) == 6


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def extractive_run(ci_run: Callable[[str], Path]) -> Path:
    """The shipped recipe's run (its bars and `eval --check` are test_recipes_contract.py's)."""
    return ci_run("tiny-bert-qa")


def test_extractive_qa_scores_with_the_v2_breakdown(extractive_run: Path) -> None:
    metrics = json.loads((extractive_run / "metrics.json").read_text())
    assert metrics["eval_NoAns_total"] == 20 and metrics["eval_HasAns_total"] == 40
    records = [json.loads(line) for line in (extractive_run / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 60 and {"id", "question", "answer", "references"} <= set(records[0])


def test_extractive_predict_from_jsonl_and_json_text(extractive_run: Path, tmp_path: Path) -> None:
    rows = [{"question": "What is the job of Bruno?", "context": "Bruno works as a pilot. Hana likes long walks."}]
    result = invoke("predict", extractive_run, "--file", write_jsonl(tmp_path / "in.jsonl", rows))
    assert result.exit_code == 0, result.output
    record = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert record["answer"] == "pilot"
    result = invoke("predict", extractive_run, "--text", json.dumps(rows[0]))
    assert result.exit_code == 0 and '"answer": "pilot"' in result.stdout
    result = invoke("predict", extractive_run, "--text", "just a question?")
    assert result.exit_code == 2 and "question and a context" in result.output


def test_generative_qa_shares_the_prompt_mechanism_and_learns(ci_run: Callable[[str], Path]) -> None:
    run = ci_run("tiny-gpt2-generative-qa")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_NoAns_exact"] >= 90, metrics  # "no answer" is learned too (beyond the recipe's bars)
    result = invoke(
        "predict",
        run,
        "--text",
        json.dumps(
            {
                "question": "Where does Emil live?",
                "context": "Ivan likes long walks. Emil lives in Lima. Dana works as a painter.",
            }
        ),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))["answer"] == "Lima"
