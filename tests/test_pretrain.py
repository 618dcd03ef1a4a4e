"""End to end: pretrain a tiny GPT-2 (CLM) and a tiny BERT (MLM) from config with their own tokenizers,
then evaluate, check expectations and reload the folder with plain transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli


def initial_and_final_perplexity(run: Path) -> tuple[float, float]:
    import math

    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    evals = [e["eval_loss"] for e in history if "eval_loss" in e]
    return math.exp(evals[0]), json.loads((run / "metrics.json").read_text())["perplexity"]


@pytest.fixture(scope="module")
def clm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clm") / "run"
    result = run_cli("pretrain", REPO / "recipes/ci/tiny-gpt2-clm.yaml", f"training.output_dir={out}")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mlm") / "run"
    result = run_cli("pretrain", "ci/tiny-bert-mlm", f"training.output_dir={out}")
    assert result.exit_code == 0, result.output
    return out


def test_clm_pretraining_lowers_perplexity(clm_run: Path) -> None:
    before, after = initial_and_final_perplexity(clm_run)
    assert after * 2 < before, (before, after)  # 120 tiny steps; the 10x bar is test_pretrain_real.py's


def test_mlm_pretraining_lowers_perplexity(mlm_run: Path) -> None:
    before, after = initial_and_final_perplexity(mlm_run)
    assert after * 5 < before, (before, after)


def test_run_folder_has_the_contract_files(clm_run: Path) -> None:
    for name in ("model.safetensors", "config.json", "tokenizer.json", "recipe.yaml", "metrics.json", "README.md"):
        assert (clm_run / name).is_file(), name
    assert not (clm_run / ".final.tmp").exists()
    assert "task: clm" in (clm_run / "recipe.yaml").read_text()


def test_clm_folder_reloads_and_generates(clm_run: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(clm_run)
    tokenizer = AutoTokenizer.from_pretrained(clm_run)
    ids = tokenizer("The import statement", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id


def test_mlm_folder_reloads_with_special_tokens(mlm_run: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    AutoModelForMaskedLM.from_pretrained(mlm_run)
    tokenizer = AutoTokenizer.from_pretrained(mlm_run)
    ids = tokenizer("hello world")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id


def test_eval_recomputes_the_same_metrics_and_checks_expectations(clm_run: Path) -> None:
    trained = json.loads((clm_run / "metrics.json").read_text())
    result = run_cli("eval", "ci/tiny-gpt2-clm", "--checkpoint", clm_run, "--check")
    assert result.exit_code == 0, result.output
    assert "expectations met" in result.output
    again = json.loads((clm_run / "metrics.json").read_text())
    assert again["eval_loss"] == pytest.approx(trained["eval_loss"], rel=1e-5)


def test_eval_check_fails_with_exit_1_when_a_bar_is_missed(clm_run: Path) -> None:
    result = run_cli("eval", "ci/tiny-gpt2-clm", "--checkpoint", clm_run, "--check", "expect.perplexity=< 1.5")
    assert result.exit_code == 1
    assert "perplexity" in result.stderr and "expected < 1.5" in result.stderr


def test_mlm_eval_is_reproducible(mlm_run: Path) -> None:
    """Eval masks are drawn once with the seed, so two evals give the same perplexity."""
    first = run_cli("eval", "ci/tiny-bert-mlm", "--checkpoint", mlm_run)
    one = json.loads((mlm_run / "metrics.json").read_text())["perplexity"]
    second = run_cli("eval", "ci/tiny-bert-mlm", "--checkpoint", mlm_run)
    two = json.loads((mlm_run / "metrics.json").read_text())["perplexity"]
    assert first.exit_code == second.exit_code == 0
    assert one == pytest.approx(two, rel=1e-6)


def test_predict_continues_text(clm_run: Path) -> None:
    result = run_cli("predict", clm_run, "--text", "The import statement")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["text"] == "The import statement" and isinstance(record["continuation"], str)
