"""Masked language modelling: packed blocks, random (or whole-word) masking, perplexity on a fixed mask draw.

`data.packing: documents` keeps the blocks but lets each document attend only to itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field

from llmkit.errors import LlmkitError
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

    def __init__(self, masker: Any, seed: int, pad: Callable, style: str | None = None) -> None:
        self.masker = masker
        self.seed = seed
        self.pad = pad
        self.epoch = 0
        #: with `data.packing: documents`, the form of the per-document attention mask (else None)
        self.style = style

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.masked(features)
        if self.style is not None and "document_starts" in features[0]:
            from llmkit.tasks.mechanisms.padding_free import isolate_documents

            batch = isolate_documents(batch, [f["document_starts"] for f in features], False, self.style)
        return batch

    def masked(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if "labels" in features[0]:
            return self.pad([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
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
    packing_choices = (True, False, "documents")
    streams = True
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
            columns = {name: values for name, values in batch.items() if name != "document_starts"}
            rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
            masked = masker(rows)
            kept = {"document_starts": batch["document_starts"]} if "document_starts" in batch else {}
            return {"input_ids": masked["input_ids"].tolist(), "labels": masked["labels"].tolist(), **kept}

        return dataset.map(mask, batched=True, remove_columns=dataset.column_names, desc="Masking eval")

    def collator(
        self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None
    ) -> Callable[[list[dict]], Any]:
        from transformers import DataCollatorForTokenClassification

        from llmkit.tasks.mechanisms.padding_free import mask_style, packing_mode

        masker = self._masker(recipe, tokenizer, seed=None)
        style = mask_style(model) if packing_mode(recipe, default=True) == "documents" else None
        return ExampleMasking(masker, recipe.training.seed, DataCollatorForTokenClassification(tokenizer), style)

    def predict(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], recipe: Recipe
    ) -> list[dict[str, Any]]:
        """Fill each mask token: the top 5 tokens and their probabilities, mask by mask."""
        import torch

        results = []
        model.eval()
        for number, row in enumerate(rows, 1):
            text = row.get("text")
            if not isinstance(text, str):
                fields = ", ".join(row) or "none"
                raise LlmkitError(f"predict input {number} has no `text` field holding text (fields: {fields})")
            encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=recipe.data.max_length)
            positions = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
            if not positions:
                mask, limit = tokenizer.mask_token, recipe.data.max_length
                cut = f"the {mask} lies past the first {limit} tokens (data.max_length): nothing filled"
                note = cut if mask in text else f"no {mask} in the text to fill"
                results.append({"text": text, "fills": [], "note": note})
                continue
            with torch.no_grad():
                logits = model(**encoded.to(model.device)).logits[0].float()
            fills = []
            for position in positions:
                top = logits[position].softmax(-1).topk(5)
                tokens = tokenizer.convert_ids_to_tokens(top.indices.tolist())
                scores = top.values.tolist()
                fills.append([{"token": t, "score": round(p, 4)} for t, p in zip(tokens, scores, strict=True)])
            results.append({"text": text, "fills": fills})
        return results


TASK = MaskedLM()
