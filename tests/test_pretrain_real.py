"""Slow: a few hundred steps on tiny-shakespeare lower eval perplexity more than tenfold (GPT-2 CLM, BERT MLM)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("recipe", "auto_class"),
    [("ci/shakespeare-gpt2-clm", "AutoModelForCausalLM"), ("ci/shakespeare-bert-mlm", "AutoModelForMaskedLM")],
)
def test_shakespeare_pretraining_lowers_perplexity_tenfold(
    recipe: str, auto_class: str, data_dir: Path, tmp_path: Path
) -> None:
    import transformers

    out = tmp_path / "run"
    result = run_cli("pretrain", recipe, f"training.output_dir={out}")
    assert result.exit_code == 0, result.output
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    before = math.exp(next(e["eval_loss"] for e in history if "eval_loss" in e))
    after = json.loads((out / "metrics.json").read_text())["perplexity"]
    assert after * 10 < before, (before, after)
    getattr(transformers, auto_class).from_pretrained(out)
    assert run_cli("eval", recipe, "--checkpoint", out, "--check").exit_code == 0
