"""Slow: a few hundred steps on tiny-shakespeare lower eval perplexity more than tenfold (GPT-2 CLM, BERT MLM)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("recipe", "auto_class"),
    [("ci/shakespeare-gpt2-clm", "AutoModelForCausalLM"), ("ci/shakespeare-bert-mlm", "AutoModelForMaskedLM")],
)
def test_shakespeare_pretraining_lowers_perplexity_tenfold(
    recipe: str, auto_class: str, data_dir: Path, ci_run: Callable[[str], Path]
) -> None:
    import transformers

    out = ci_run(recipe.removeprefix("ci/"))  # the run test_recipes_contract.py checks the bars of
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    before = math.exp(next(e["eval_loss"] for e in history if "eval_loss" in e))
    after = json.loads((out / "metrics.json").read_text())["perplexity"]
    assert after * 10 < before, (before, after)
    getattr(transformers, auto_class).from_pretrained(out)
