"""Masked language modelling: packed blocks, random (or whole-word) masking, perplexity on a fixed mask draw."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field

from llmkit.section import Section
from llmkit.tasks.base import Prepared, Task
from llmkit.tasks.mechanisms.packing import lm_features

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmkit.recipe import Recipe


class MaskingOptions(Section):
    """`mlm:` in a recipe."""

    probability: float = Field(0.15, gt=0, lt=1, description="Fraction of tokens masked.")
    whole_word_mask: bool = Field(False, description="Mask all pieces of a word together.")


class ExampleMasking:
    """Masks each training example with its own draw, seeded by (seed, epoch, the example's tokens); eval
    batches were masked once at preprocessing (they carry labels), so eval perplexity does not depend on
    the mask draw of the moment.

    One seeded generator per process would give every process the same mask positions, and a run's masks
    would depend on how many processes share its batches. Drawn per example, the masks are the same for 1 or
    N processes and any batch size, and new each epoch (dynamic masking). The Trainer tells it the epoch
    (`on_epoch_begin`); persistent dataloader workers keep the copy they started with.
    """

    def __init__(self, masker: Any, seed: int, pad: Callable) -> None:
        self.masker = masker
        self.seed = seed
        self.pad = pad
        self.epoch = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if "labels" in features[0]:
            return self.pad(features)
        rows = []
        for feature in features:
            ids = torch.tensor([feature["input_ids"]], dtype=torch.long)
            special = feature.get("special_tokens_mask")
            offsets = feature.get("offset_mapping")
            self.masker.generator = torch.Generator().manual_seed(self.draw(feature["input_ids"]))
            inputs, labels = self.masker.torch_mask_tokens(
                ids,
                special_tokens_mask=None if special is None else torch.tensor([special]),
                offset_mapping=None if offsets is None else torch.tensor([offsets]),
            )
            rows.append({"input_ids": inputs[0].tolist(), "labels": labels[0].tolist()})
        return self.pad(rows)

    def draw(self, ids: list[int]) -> int:
        """The generator seed of one example in this epoch (63 bits of a hash of seed, epoch and tokens)."""
        import hashlib

        import numpy as np

        digest = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8)
        digest.update(f"{self.seed}:{self.epoch}".encode())
        return int.from_bytes(digest.digest(), "little") >> 1

    # TrainerCallback protocol (duck-typed: transformers is imported lazily)
    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.epoch = int(state.epoch or 0)


class MaskedLM(Task):
    name = "mlm"
    commands = ("pretrain", "finetune")
    roles = ("text",)
    auto_class_name = "AutoModelForMaskedLM"
    mapping_name = "MODEL_FOR_MASKED_LM_MAPPING_NAMES"
    needs = "a masked language model (BERT, RoBERTa, ...)"
    loss_is_token_mean = True
    options_class = MaskingOptions

    def _masker(self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, seed: int | None) -> Any:
        from transformers import DataCollatorForLanguageModeling

        return DataCollatorForLanguageModeling(
            tokenizer,
            mlm=True,
            mlm_probability=recipe.options.probability,
            whole_word_mask=recipe.options.whole_word_mask,
            seed=seed,
        )

    def preprocess(self, recipe: Recipe, raw: DatasetDict, tokenizer: PreTrainedTokenizerBase) -> Prepared:
        from llmkit.errors import LlmkitError

        if tokenizer.mask_token is None:
            raise LlmkitError("task `mlm` needs a tokenizer with a mask token (e.g. BERT's [MASK])")
        extra = (
            ("special_tokens_mask", "offset_mapping") if recipe.options.whole_word_mask else ("special_tokens_mask",)
        )
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

    def collator(
        self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None
    ) -> Callable[[list[dict]], Any]:
        from transformers import DataCollatorForTokenClassification

        masker = self._masker(recipe, tokenizer, seed=None)
        return ExampleMasking(masker, recipe.training.seed, DataCollatorForTokenClassification(tokenizer))

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


TASK = MaskedLM()
