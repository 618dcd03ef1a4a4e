"""What both QA methods share: gold answers in their accepted shapes, SQuAD scoring, prediction records,
`predict` inputs, and the nested SQuAD file layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError
from llmkit.tasks.base import require_nonempty_text

if TYPE_CHECKING:
    from datasets import Dataset

    from llmkit.recipe import Recipe


def answer_lists(value: Any) -> tuple[list[str], list[int | None]]:
    """Gold answers of one row as (texts, starts), from SQuAD's {text: [...], answer_start: [...]},
    a list of {text, answer_start} records, or a plain answer string."""
    if value is None:
        return [], []
    if isinstance(value, str):
        return [value], [None]
    if isinstance(value, dict):
        texts = list(value.get("text") or [])
        starts = list(value.get("answer_start") or [None] * len(texts))
        return [str(t) for t in texts], starts
    if isinstance(value, list):
        records = [a if isinstance(a, dict) else {"text": a} for a in value]
        return [str(a.get("text", "")) for a in records], [a.get("answer_start") for a in records]
    raise LlmkitError(f"data column `answers` holds {type(value).__name__}; expected SQuAD's {{text, answer_start}}")


def gold_answers(examples: Dataset) -> list[list[str]]:
    if "answers" in examples.column_names:
        return [answer_lists(value)[0] for value in examples["answers"]]
    return [[str(a)] if a not in (None, "") else [] for a in examples["answer"]]


def question_ids(examples: Dataset) -> list[str]:
    if "id" in examples.column_names:
        return [str(i) for i in examples["id"]]
    return [str(i) for i in range(len(examples))]


def is_version_2(recipe: Recipe, golds: list[list[str]]) -> bool:
    """SQuAD v2 scoring when the recipe says so or when some eval question has no answer."""
    return recipe.options.version_2_with_negative or any(not g for g in golds)


def squad_scores(predictions: list[str], examples: Dataset, recipe: Recipe) -> dict[str, float]:
    from llmkit.tasks.mechanisms.scores import squad

    golds = gold_answers(examples)
    ids = question_ids(examples)
    if len(set(ids)) != len(ids):
        ids = [str(i) for i in range(len(ids))]
    return squad(
        dict(zip(ids, predictions, strict=True)), dict(zip(ids, golds, strict=True)), is_version_2(recipe, golds)
    )


def answer_records(predictions: list[str], examples: Dataset, scores: list[float] | None = None) -> list[dict]:
    golds = gold_answers(examples) if {"answers", "answer"} & set(examples.column_names) else None
    records = []
    for index, (qid, question, context, prediction) in enumerate(
        zip(question_ids(examples), examples["question"], examples["context"], predictions, strict=True)
    ):
        record: dict[str, Any] = {"id": qid, "question": question, "context": context, "answer": prediction}
        if scores is not None:
            record["score"] = round(float(scores[index]), 4)
        if golds is not None:
            record["references"] = golds[index]
        records.append(record)
    return records


def qa_input(row: dict[str, Any]) -> dict[str, Any]:
    """A `predict` input: a row with question and context, or `--text` holding such a JSON object."""
    if "question" not in row and isinstance(row.get("text"), str):
        try:
            parsed = json.loads(row["text"])
        except json.JSONDecodeError:
            parsed = None
        row = parsed if isinstance(parsed, dict) else row
    if not isinstance(row.get("question"), str) or not isinstance(row.get("context"), str):
        raise LlmkitError(
            'QA predict needs a question and a context: --file rows.jsonl with {"question": ..., "context": ...} '
            "per line, or --text with such a JSON object"
        )
    return row


def check_answers(dataset: Dataset, split: str) -> None:
    """Questions and contexts are text, and every answer_start points at its answer text in the context."""
    require_nonempty_text(dataset, "question", split)
    require_nonempty_text(dataset, "context", split)
    ids = question_ids(dataset)
    for index, (context, value) in enumerate(zip(dataset["context"], dataset["answers"], strict=True)):
        texts, starts = answer_lists(value)
        for text, start in zip(texts, starts, strict=True):
            if not isinstance(start, int) or context[start : start + len(text)] != text:
                found = context[start : start + len(text)] if isinstance(start, int) else None
                raise LlmkitError(
                    f"data column `answers`: in {split} row {index} (id {ids[index]}), answer_start {start} does not "
                    f"point at the answer {text!r} in the context (found {found!r})"
                )


def is_nested_squad(path: Path) -> bool:
    """A `.json` file holding `{"data": [{"paragraphs": ...}]}`: the original SQuAD layout."""
    with path.open("rb") as handle:
        head = handle.read(1)
        while head.isspace():
            head = handle.read(1)
    if head != b"{":
        return False
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    records = content.get("data") if isinstance(content, dict) else None
    return isinstance(records, list) and bool(records) and isinstance(records[0], dict) and "paragraphs" in records[0]


def nested_squad_rows(path: Path) -> list[dict[str, Any]]:
    """The original nested SQuAD layout (data → paragraphs → qas) as one row per question; None for any
    other file."""
    if path.suffix.lower() != ".json" or not is_nested_squad(path):
        return None
    rows = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = qa.get("answers", [])
                rows.append(
                    {
                        "id": str(qa["id"]),
                        "title": article.get("title", ""),
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in answers],
                            "answer_start": [int(a["answer_start"]) for a in answers],
                        },
                    }
                )
    return rows


class SquadFiles:
    """Both QA methods (and the registered task that picks one) read the nested SQuAD layout."""

    def read_file(self, path: Path) -> list[dict[str, Any]] | None:
        return nested_squad_rows(path)
