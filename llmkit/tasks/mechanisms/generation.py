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
    across_processes: bool = False,
) -> list[str]:
    """Generate a continuation for each tokenized prompt; returns only the new text, in input order.

    `across_processes` (evaluation in a multi-process run; every process calls it with all prompts): the
    batches are shared out among the processes and every process gets all the texts back (`shards.spread`).
    """
    import torch

    from llmkit.tasks.mechanisms.shards import forward_is_collective, spread

    batch_size = batch_size or settings.batch_size
    prompts = fit_prompts(model, prompts, settings.max_new_tokens)
    options = generation_options(settings)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def run(indices: list[int]) -> list[str]:
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
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if across_processes:
        texts = spread(batches, run, lockstep=forward_is_collective(model))
    else:
        texts = [run(indices) for indices in batches]
    for indices, batch_texts in zip(batches, texts, strict=True):
        for i, text in zip(indices, batch_texts, strict=True):
            outputs[i] = text
    model.train(was_training)
    return outputs


def fit_prompts(model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """A decoder's prompt plus its new tokens must fit its positions: longer prompts lose their start (the
    end is what the continuation follows), and the user is told how many were cut."""
    import sys

    from llmkit.errors import LlmkitError
    from llmkit.models import max_positions
    from llmkit.tasks.mechanisms.shards import process_group

    positions = None if getattr(model.config, "is_encoder_decoder", False) else max_positions(model.config)
    if positions is None:
        return prompts
    room = positions - max_new_tokens
    if room < 1:
        raise LlmkitError(
            f"recipe field `generation.max_new_tokens`: {max_new_tokens} leaves no room for a prompt in the "
            f"model's {positions} positions"
        )
    cut = sum(len(prompt) > room for prompt in prompts)
    if cut and process_group()[0] == 0:  # every process of a run sees all prompts; one says so
        print(
            f"note: {cut} prompt(s) longer than {room} tokens were cut from the left to leave room for "
            f"{max_new_tokens} new tokens in the model's {positions} positions",
            file=sys.stderr,
        )
    return [prompt[-room:] if len(prompt) > room else prompt for prompt in prompts]
