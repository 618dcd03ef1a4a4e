"""Scoring the choices of a multiple-choice row, for a model with a multiple-choice head or a plain decoder.

A row's choices are its own sequences: `input_ids` is a list of token lists, one per choice. The collator
flattens them, pads, and reshapes to (rows, choices, tokens), as the Hugging Face run_swag example does;
rows with fewer choices than the widest row of the batch get copies of their last choice, switched off by
`choice_mask`. An encoder (BERT) scores all choices at once with its multiple-choice head; a decoder (GPT-2,
which has no such head) scores each choice by the mean log-probability of its tokens after the prompt
(marked by `choice_tokens`). Either way the loss is the cross-entropy over a row's choice scores: a mean
over examples, like the head's own loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Trainer

#: features that are not model inputs, padded and reshaped by the collator itself
CHOICE_TOKENS = "choice_tokens"
CHOICE_MASK = "choice_mask"


@dataclass
class ChoiceCollator:
    """Rows of choices → (rows, choices, tokens) tensors, plus `choice_mask` and `labels` (the right index)."""

    tokenizer: PreTrainedTokenizerBase

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from transformers.data.data_collator import pad_without_fast_tokenizer_warning

        width = max(len(feature["input_ids"]) for feature in features)
        keys = [key for key in features[0] if key != "labels"]
        flat = [
            {key: feature[key][min(slot, len(feature["input_ids"]) - 1)] for key in keys}
            for feature in features
            for slot in range(width)
        ]
        marks = [row.pop(CHOICE_TOKENS) for row in flat] if CHOICE_TOKENS in keys else None
        # right padding: a decoder's real tokens keep their positions, so padding never changes a score
        batch = dict(
            pad_without_fast_tokenizer_warning(
                self.tokenizer, flat, padding=True, padding_side="right", return_tensors="pt"
            )
        )
        length = batch["input_ids"].shape[1]
        if marks is not None:
            batch[CHOICE_TOKENS] = torch.tensor([mark + [0] * (length - len(mark)) for mark in marks])
        batch = {key: value.view(len(features), width, length) for key, value in batch.items()}
        batch[CHOICE_MASK] = torch.tensor([[slot < len(f["input_ids"]) for slot in range(width)] for f in features])
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([int(feature["labels"]) for feature in features])
        return batch


def choice_scores(model: Any, inputs: dict[str, Any], decoder: bool) -> Any:
    """(rows, choices) scores, float32; switched-off choices get the lowest float so they are never picked."""
    import torch

    mask = inputs[CHOICE_MASK]
    if decoder:
        rows, width, length = inputs["input_ids"].shape
        flat = {
            key: inputs[key].reshape(rows * width, length) for key in ("input_ids", "attention_mask", CHOICE_TOKENS)
        }
        scores = lm_choice_scores(model, flat["input_ids"], flat["attention_mask"], flat[CHOICE_TOKENS])
        scores = scores.view(rows, width)
    else:
        model_inputs = {key: value for key, value in inputs.items() if key != CHOICE_MASK}
        scores = model(**model_inputs).logits.float()
    return scores.masked_fill(~mask.to(scores.device).bool(), torch.finfo(scores.dtype).min)


def lm_choice_scores(model: Any, input_ids: Any, attention_mask: Any, choice_tokens: Any) -> Any:
    """Per sequence, the mean log-probability of the tokens marked in `choice_tokens`, each predicted from
    the tokens before it: the length-normalised log-likelihood of the choice given the prompt."""
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    targets = input_ids[:, 1:].to(logits.device)
    logprobs = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    marked = choice_tokens[:, 1:].to(logits.device, logits.dtype)
    return (logprobs * marked).sum(-1) / marked.sum(-1).clamp(min=1)


def choice_trainer_class(decoder: bool) -> type[Trainer]:
    """A Trainer whose loss is the cross-entropy over each row's choice scores, and whose evaluation hands
    those scores (not a model's raw outputs) to `preprocess_logits_for_metrics`."""
    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    class ChoiceTrainer(Trainer):
        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            inputs = dict(inputs)
            labels = inputs.pop("labels", None)
            scores = choice_scores(model, inputs, decoder)
            loss = F.cross_entropy(scores, labels.to(scores.device)) if labels is not None else None
            return (loss, {"logits": scores}) if return_outputs else loss

        def prediction_step(
            self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: list[str] | None = None
        ) -> tuple[Any, Any, Any]:
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
            loss = loss.detach() if loss is not None else None
            if prediction_loss_only:
                return loss, None, None
            return loss, outputs["logits"].detach(), inputs.get("labels")

    return ChoiceTrainer


def best_and_scores(logits: Any, labels: Any) -> Any:
    """Per batch, keep the picked index (column 0) and the choice scores (the rest): batches of different
    widths are padded when the Trainer joins them, which leaves column 0 intact."""
    import torch

    scores = logits[0] if isinstance(logits, tuple) else logits
    return torch.cat([scores.argmax(-1, keepdim=True).to(scores.dtype), scores], dim=-1)


def accuracy(prediction: Any) -> dict[str, float]:
    picked = prediction.predictions[:, 0].astype(int)
    return {"accuracy": float((picked == prediction.label_ids.reshape(-1)).mean())}
