"""Performance guards: fast help, a cheap collator for packed blocks, and benchmarks that report honestly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_help_loads_neither_rich_nor_heavy_libraries() -> None:
    """Typer's rich help formatter doubled `llmkit --help`'s start-up time; plain help must stay plain."""
    code = (
        "import sys\nfrom llmkit.cli import app\n"
        "try:\n    app(['--help'], prog_name='llmkit')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('rich', 'torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Commands:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


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


def test_recipe_fp16_is_not_overridden_by_the_bf16_default() -> None:
    from llmkit.recipe import recipe_from_mapping
    from llmkit.trainer import default_arguments

    assert "bf16" in default_arguments()
    recipe = recipe_from_mapping(
        {
            "task": "clm",
            "model": {"from_config": {"model_type": "gpt2"}},
            "data": {"train": "x.txt"},
            "training": {"output_dir": "unused", "bf16": False},
        }
    )
    assert recipe.training.arguments()["bf16"] is False


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
