"""Summarization: `document` → `summary`, scored with ROUGE.

GPT-2 style decoders learn `document + "\\nTL;DR:" + summary + EOS` with the prompt masked; T5/BART
learn it as sequence-to-sequence (with the checkpoint's own task prefix, e.g. T5's "summarize: ").
Both are the shared prompt → target mechanism of `prompting.py`; this module only says what the prompt,
the target and the score are. Encoder-only models (BERT) cannot write text and are refused up front.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmkit.tasks.mechanisms.prompting import PromptToTarget

if TYPE_CHECKING:
    from datasets import Dataset

    from llmkit.recipe import Recipe


class Summarization(PromptToTarget):
    name = "summarization"
    roles = ("document", "summary")
    target_roles = ("summary",)
    needs = "a decoder-only (GPT-2) or encoder-decoder (T5, BART) model"
    default_separator = "\nTL;DR:"
    text_role = "document"
    target_role = "summary"

    def prompt_parts(self, batch: dict[str, list]) -> tuple[list[str], list[str]]:
        documents = [str(d) for d in batch["document"]]
        return documents, [""] * len(documents)

    def target_texts(self, batch: dict[str, list], split: str) -> list[str]:
        return [str(s) for s in batch["summary"]]

    def score(self, predictions: list[str], examples: Dataset, recipe: Recipe) -> dict[str, float]:
        from llmkit.tasks.mechanisms.scores import rouge

        return rouge(predictions, [str(s) for s in examples["summary"]])

    def records(self, predictions: list[str], examples: Dataset) -> list[dict[str, Any]]:
        references = examples["summary"] if "summary" in examples.column_names else [None] * len(predictions)
        return [
            {"document": document, "summary": prediction, **({"reference": reference} if reference is not None else {})}
            for document, prediction, reference in zip(examples["document"], predictions, references, strict=True)
        ]


TASK = Summarization()
