"""Generative QA: `context \nQuestion: q \nAnswer:` → the answer, with the prompt → target mechanism."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from llmkit.errors import LlmkitError
from llmkit.tasks.base import require_nonempty_text
from llmkit.tasks.mechanisms.prompting import PromptToTarget
from llmkit.tasks.qa.answers import SquadFiles, answer_lists, answer_records, qa_input, squad_scores

if TYPE_CHECKING:
    from datasets import Dataset

    from llmkit.recipe import Recipe


class GenerativeQA(SquadFiles, PromptToTarget):
    """`context \\nQuestion: q \\nAnswer:` → answer + EOS (decoders; encoder-decoders read the same prompt)."""

    name = "qa"
    roles = ("question", "context")
    optional_roles = ("answers", "answer", "id")
    role_kinds: ClassVar[dict[str, str]] = {"answers": "answers", "answer": "text", "id": "any"}
    needs = "a decoder-only (GPT-2) or encoder-decoder (T5) model"
    default_separator = "\nAnswer:"
    text_role = "question"
    target_role = "answers"

    def validate(self, dataset: Dataset, split: str) -> None:
        require_nonempty_text(dataset, "question", split)
        require_nonempty_text(dataset, "context", split)
        if not {"answers", "answer"} & set(dataset.column_names):
            raise LlmkitError(
                f"the {split} data has no `answers` (SQuAD format) or `answer` (text) column; "
                f"columns are: {', '.join(dataset.column_names)} — set `data.columns.answers` or `data.columns.answer`"
            )

    def prompt_parts(self, batch: dict[str, list]) -> tuple[list[str], list[str]]:
        return [str(c) for c in batch["context"]], [f"\nQuestion: {str(q).strip()}" for q in batch["question"]]

    def target_texts(self, batch: dict[str, list], split: str) -> list[str]:
        """The first gold answer; an unanswerable question (SQuAD v2) learns the empty answer."""
        if "answers" in batch:
            return [(answer_lists(value)[0] or [""])[0] for value in batch["answers"]]
        return ["" if a is None else str(a) for a in batch["answer"]]

    def score(self, predictions: list[str], examples: Dataset, recipe: Recipe) -> dict[str, float]:
        return squad_scores(predictions, examples, recipe)

    def records(self, predictions: list[str], examples: Dataset) -> list[dict[str, Any]]:
        return answer_records(predictions, examples)

    def input_row(self, row: dict[str, Any]) -> dict[str, Any]:
        return qa_input(row)
