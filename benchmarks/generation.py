"""Generation: llmkit's batched `generate` (left-padded, length-sorted batches) vs one prompt at a time.

The prompts are built the way summarization evaluation builds them (`task.encoder(recipe, tokenizer).prompts`):
SciTLDR abstracts cut to the prompt budget, then "\\nTL;DR:". The model is a small GPT-2 built from config
(random weights: speed does not depend on what it learned). The baseline is the plain loop a user would
write: `model.generate` on each prompt alone, with the same greedy settings. Outputs are compared too.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.common import Result, clock, data_dir, documents, gpt2_tokenizer, interleaved, median


def abstracts(count: int) -> tuple[str, list[str]]:
    root = data_dir()
    path = root / "scitldr-a" / "dev.jsonl" if root else None
    if path is not None and path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts = [" ".join(r["source"]) if isinstance(r["source"], list) else str(r["source"]) for r in rows]
        return "SciTLDR-A dev abstracts", texts[:count]
    corpus, texts = documents()
    return corpus, texts[:count]


def setup(count: int, max_new_tokens: int) -> tuple[Any, Any, Any, list[list[int]], str]:
    from transformers import AutoModelForCausalLM

    from llmkit.models import build_model, load_config
    from llmkit.recipe import recipe_from_mapping
    from llmkit.tasks import TASKS

    _, tokenizer = gpt2_tokenizer()
    recipe = recipe_from_mapping(
        {
            "task": "summarization",
            "model": {
                "from_config": {"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": 512}
            },
            "data": {"train": "unused.jsonl", "max_length": 384},
            "summarization": {"max_target_length": 64},
            "training": {"output_dir": "unused"},
            "generation": {"max_new_tokens": max_new_tokens, "batch_size": 16},
        }
    )
    config = load_config(recipe.model)
    task = TASKS["summarization"].specialize(config, recipe)
    import torch

    torch.manual_seed(0)
    model = build_model(AutoModelForCausalLM, recipe.model, config, tokenizer)
    corpus, texts = abstracts(count)
    prompts = task.encoder(recipe, tokenizer).prompts(texts, [""] * len(texts))
    return recipe, model, tokenizer, prompts, corpus


def one_by_one(model: Any, tokenizer: Any, prompts: list[list[int]], settings: Any) -> list[str]:
    """The baseline: each prompt alone through `model.generate`, same greedy options."""
    import torch

    from llmkit.tasks.mechanisms.generation import generation_options

    options = generation_options(settings)
    model.eval()
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            generated = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=tokenizer.eos_token_id, **options
            )
            outputs.append(tokenizer.decode(generated[0, len(prompt) :], skip_special_tokens=True).strip())
    return outputs


def run(quick: bool) -> list[Result]:
    from llmkit.tasks.mechanisms.generation import generate

    count, new_tokens = (32, 24) if quick else (96, 64)
    recipe, model, tokenizer, prompts, corpus = setup(count, new_tokens)
    outputs: dict[str, list[str]] = {}

    def timed(name: str, function: Any) -> float:
        start = clock()
        outputs[name] = function()
        return len(prompts) / (clock() - start)

    generate(model, tokenizer, prompts[:4], recipe.generation)  # warm-up
    rates = interleaved(
        {
            "batched": lambda: timed("batched", lambda: generate(model, tokenizer, prompts, recipe.generation)),
            "single": lambda: timed("single", lambda: one_by_one(model, tokenizer, prompts, recipe.generation)),
        },
        3 if quick else 5,
    )
    same = sum(a == b for a, b in zip(outputs["batched"], outputs["single"], strict=True)) / len(prompts)
    lengths = sorted(len(p) for p in prompts)
    return [
        Result(
            "generation prompts/s: batched generate (vs one by one)",
            median(rates["batched"]),
            median(rates["single"]),
            unit="prompt/s",
            goal=">= 3",
            key="generation_batched_speedup",
            note=f"{corpus}, {len(prompts)} prompts of {lengths[0]}–{lengths[-1]} tokens, {new_tokens} new tokens, "
            f"batch {recipe.generation.batch_size}, GPT-2 2L/128d; identical outputs {same:.0%}",
            details={"prompts_per_second": rates, "identical_outputs": same},
        )
    ]
