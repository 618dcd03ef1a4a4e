"""Performance guards: a cheap collator for packed blocks, and benchmarks that report honestly (fast help:
test_cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from llmkit.errors import LlmkitError

REPO = Path(__file__).resolve().parent.parent


def test_packed_blocks_collate_like_tokenizer_pad() -> None:
    """The equal-length fast path gives exactly what tokenizer.pad + attention-mask labels give."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from llmkit.tasks.clm import PadAndLabelCollator

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<eos>": 1}, unk_token="a")))
    tok.eos_token = tok.pad_token = "<eos>"
    blocks = [{"input_ids": [0, 1, 0, 0]}, {"input_ids": [1, 1, 0, 1]}]
    fast = PadAndLabelCollator(tok)(blocks)
    slow = tok.pad(blocks, return_tensors="pt", return_attention_mask=True)
    assert torch.equal(fast["input_ids"], slow["input_ids"])
    assert torch.equal(fast["attention_mask"], slow["attention_mask"])
    assert torch.equal(fast["labels"], slow["input_ids"]) and fast["labels"].dtype == torch.long
    fast["labels"][0, 0] = -100  # labels must not alias the inputs
    assert fast["input_ids"][0, 0] == 0


def test_recipe_fp16_is_not_overridden_by_the_bf16_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a bf16 GPU the default turns bf16 on; a recipe asking for fp16 gets fp16 alone (both at once is a
    TrainingArguments error), and a recipe's own bf16 value wins over the default."""
    import transformers

    from llmkit import trainer
    from llmkit.recipe import recipe_from_mapping

    def recipe(**training: Any) -> Any:
        return recipe_from_mapping(
            {
                "task": "clm",
                "model": {"from_config": {"model_type": "gpt2"}},
                "data": {"train": "x.txt"},
                "training": {"output_dir": "unused", **training},
            }
        )

    if not torch_has_cuda():  # on CPU, fp16 is refused in one line before TrainingArguments sees it
        with pytest.raises(LlmkitError, match=r"`training.fp16`: fp16 needs a GPU"):
            trainer.training_arguments(recipe(fp16=True))
    cpu_defaults = trainer.default_arguments()
    monkeypatch.setattr(trainer, "default_arguments", lambda: {**cpu_defaults, "use_cpu": False, "bf16": True})
    # TrainingArguments' own checks need the GPU this machine may not have; what llmkit passes it is under test
    monkeypatch.setattr(transformers.Seq2SeqTrainingArguments, "__post_init__", lambda self: None)
    assert trainer.training_arguments(recipe()).bf16 is True  # the hardware default
    fp16 = trainer.training_arguments(recipe(fp16=True))
    assert fp16.fp16 is True and fp16.bf16 is False
    assert trainer.training_arguments(recipe(bf16=False)).bf16 is False
    both = trainer.training_arguments(recipe(fp16=True, bf16=True))  # said by the user: passed on as written
    assert both.fp16 is True and both.bf16 is True


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_benchmark_goals_and_gpu_skip() -> None:
    sys.path.insert(0, str(REPO))
    import torch

    from benchmarks import gpu
    from benchmarks.common import Result

    assert Result("r", 9.6, 10.0, goal=">= 0.95").passed is True
    assert Result("r", 9.0, 10.0, goal=">= 0.95").passed is False
    assert Result("t", 0.2, 1.0, goal="<= 0.10").passed is False
    assert Result("n", 1.0).passed is None and Result("n", 1.0).score == 1.0
    assert gpu.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    if not torch.cuda.is_available():
        assert all("not measured (no GPU)" in r.note for r in gpu.run(quick=True))
