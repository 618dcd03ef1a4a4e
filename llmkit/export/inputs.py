"""The inputs an export is checked and timed on: the run's eval rows, preprocessed and collated as in
evaluation, so parity is measured on what the model really sees."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from llmkit.export.heads import Head
    from llmkit.pipeline import Setup

#: batch keys that hold gold values, never graph inputs
LABEL_KEYS = ("labels", "label", "start_positions", "end_positions")


class EvalInputs:
    """The run's eval rows, preprocessed and collated exactly as in evaluation (labels kept aside)."""

    def __init__(self, run: Setup, model: Any, head: Head, samples: int) -> None:
        from datasets import DatasetDict

        rows = run.raw["eval"]
        rows = rows.select(range(min(samples, len(rows))))
        prepared = run.task.preprocess(run.recipe, DatasetDict({"eval": rows}), run.tokenizer)
        if prepared.eval is None or len(prepared.eval) == 0:
            raise LlmkitError("the eval data gives no examples to check the export on")
        self.features = prepared.eval
        self.collate = run.task.collator(run.recipe, run.tokenizer, model)
        self.head = head

    def batch(self, indices: list[int]) -> dict[str, Any]:
        batch = dict(self.collate([self.features[i % len(self.features)] for i in indices]))
        if self.head.position_ids and "attention_mask" in batch:
            batch["position_ids"] = positions(batch["attention_mask"])
        return batch

    def batches(self, size: int = 16) -> list[dict[str, Any]]:
        count = len(self.features)
        return [self.batch(list(range(first, min(first + size, count)))) for first in range(0, count, size)]


def positions(attention_mask: Any) -> Any:
    """Position ids as `generate` makes them: counted over real tokens, so left padding does not shift them."""
    ids = attention_mask.long().cumsum(-1) - 1
    return ids.masked_fill(attention_mask == 0, 0)


def input_names(batch: dict[str, Any], model: Any, head: Head) -> list[str]:
    """The batch's tensors that the model's forward takes (labels left out), in the batch's order."""
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    names = [k for k in batch if k in accepted and k not in LABEL_KEYS and hasattr(batch[k], "dtype")]
    if head.position_ids and "position_ids" not in names and "position_ids" in accepted:
        names.append("position_ids")
    return names
