"""Batched text generation shared by every task that writes text (clm predict, summarization, generative QA).

Prompts are left-padded so that all rows of a batch end where generation starts (right padding makes a
decoder continue from pad tokens), and sorted by length so batches waste little padding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmkit.recipe import GenerationSection


def generation_options(settings: GenerationSection) -> dict[str, Any]:
    """The recipe's `generation:` section as `generate()` keyword arguments (unset ones left out)."""
    options = settings.model_dump(exclude={"batch_size"}, exclude_none=True)
    if not settings.do_sample:
        options.pop("temperature", None)
        options.pop("top_p", None)
    return options


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    settings: GenerationSection,
    batch_size: int | None = None,
) -> list[str]:
    """Generate a continuation for each tokenized prompt; returns only the new text, in input order."""
    import torch

    batch_size = batch_size or settings.batch_size
    options = generation_options(settings)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in indices)
        ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            length = len(prompts[i])
            if encoder_decoder:  # encoders take right padding
                ids[row, :length] = torch.tensor(prompts[i])
                mask[row, :length] = 1
            else:
                ids[row, width - length :] = torch.tensor(prompts[i])
                mask[row, width - length :] = 1
        with torch.no_grad():
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), pad_token_id=pad_id, **options
            )
        new_tokens = generated if encoder_decoder else generated[:, width:]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for i, text in zip(indices, texts, strict=True):
            outputs[i] = text.strip()
    model.train(was_training)
    return outputs
