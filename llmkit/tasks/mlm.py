"""Masked language modelling: packed blocks, random (or whole-word) masking, perplexity on a fixed mask draw."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llmkit.tasks.base import Prepared, Task
from llmkit.tasks.packing import lm_features

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmkit.recipe import Recipe


class MaskedOrPremasked:
    """Masks training batches afresh; eval batches were masked once at preprocessing (they carry labels),
    so eval perplexity does not depend on the mask draw of the moment."""

    def __init__(self, masker: Callable, premasked: Callable) -> None:
        self.masker = masker
        self.premasked = premasked

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return (self.premasked if "labels" in features[0] else self.masker)(features)


class MaskedLM(Task):
    name = "mlm"
    roles = ("text",)
    auto_class_name = "AutoModelForMaskedLM"
    mapping_name = "MODEL_FOR_MASKED_LM_MAPPING_NAMES"
    needs = "a masked language model (BERT, RoBERTa, ...)"

    def _masker(self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, seed: int | None) -> Any:
        from transformers import DataCollatorForLanguageModeling

        return DataCollatorForLanguageModeling(
            tokenizer,
            mlm=True,
            mlm_probability=recipe.data.mlm_probability,
            whole_word_mask=recipe.data.whole_word_mask,
            seed=seed,
        )

    def preprocess(self, recipe: Recipe, raw: DatasetDict, tokenizer: PreTrainedTokenizerBase) -> Prepared:
        from llmkit.errors import LlmkitError

        if tokenizer.mask_token is None:
            raise LlmkitError("task `mlm` needs a tokenizer with a mask token (e.g. BERT's [MASK])")
        extra = ("special_tokens_mask", "offset_mapping") if recipe.data.whole_word_mask else ("special_tokens_mask",)
        features = {
            split: lm_features(dataset, tokenizer, recipe, split, append_eos=False, extra_columns=extra)
            for split, dataset in raw.items()
        }
        evaluation = features.get("eval")
        if evaluation is not None:
            evaluation = self._mask_once(evaluation, recipe, tokenizer)
        return Prepared(features.get("train"), evaluation)

    def _mask_once(self, dataset: Dataset, recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> Dataset:
        masker = self._masker(recipe, tokenizer, seed=recipe.training.seed)

        def mask(batch: dict[str, list]) -> dict[str, list]:
            rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
            masked = masker(rows)
            return {"input_ids": masked["input_ids"].tolist(), "labels": masked["labels"].tolist()}

        return dataset.map(mask, batched=True, remove_columns=dataset.column_names, desc="Masking eval")

    def collator(self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict]], Any]:
        from transformers import DataCollatorForTokenClassification

        return MaskedOrPremasked(
            self._masker(recipe, tokenizer, seed=recipe.training.seed),
            DataCollatorForTokenClassification(tokenizer),
        )

    def predict(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], recipe: Recipe
    ) -> list[dict[str, Any]]:
        """Fill each mask token with the model's top guesses."""
        import torch

        results = []
        for row in rows:
            text = str(row["text"])
            encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=recipe.data.max_length)
            with torch.no_grad():
                logits = model(**encoded).logits[0]
            positions = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
            fills = [tokenizer.convert_ids_to_tokens(logits[p].topk(5).indices.tolist()) for p in positions]
            results.append({"text": text, "fills": fills})
        return results
