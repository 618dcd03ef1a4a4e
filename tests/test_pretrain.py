"""End to end: pretrain a tiny GPT-2 (CLM) and a tiny BERT (MLM) from config with their own tokenizers,
then evaluate, check expectations and reload the folder with plain transformers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.tiny_recipe import invoke


def initial_and_final_perplexity(run: Path) -> tuple[float, float]:
    import math

    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    evals = [e["eval_loss"] for e in history if "eval_loss" in e]
    return math.exp(evals[0]), json.loads((run / "metrics.json").read_text())["perplexity"]


@pytest.fixture(scope="module")
def clm_run(ci_run: Callable[[str], Path]) -> Path:
    return ci_run("tiny-gpt2-clm")


@pytest.fixture(scope="module")
def mlm_run(ci_run: Callable[[str], Path]) -> Path:
    return ci_run("tiny-bert-mlm")


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
    result = invoke("eval", "ci/tiny-gpt2-clm", "--checkpoint", clm_run, "--check")
    assert result.exit_code == 0, result.output
    assert "expectations met" in result.output
    again = json.loads((clm_run / "metrics.json").read_text())
    assert again["eval_loss"] == pytest.approx(trained["eval_loss"], rel=1e-5)


def test_eval_check_fails_with_exit_1_when_a_bar_is_missed(clm_run: Path) -> None:
    result = invoke("eval", "ci/tiny-gpt2-clm", "--checkpoint", clm_run, "--check", "expect.perplexity=< 1.5")
    assert result.exit_code == 1
    assert "perplexity" in result.stderr and "expected < 1.5" in result.stderr


def test_mlm_eval_is_reproducible(mlm_run: Path) -> None:
    """Eval masks are drawn once with the seed, so two evals give the same perplexity."""
    first = invoke("eval", "ci/tiny-bert-mlm", "--checkpoint", mlm_run)
    one = json.loads((mlm_run / "metrics.json").read_text())["perplexity"]
    second = invoke("eval", "ci/tiny-bert-mlm", "--checkpoint", mlm_run)
    two = json.loads((mlm_run / "metrics.json").read_text())["perplexity"]
    assert first.exit_code == second.exit_code == 0
    assert one == pytest.approx(two, rel=1e-6)


def test_predict_continues_text_as_greedy_search_with_the_runs_generation_settings(
    clm_run: Path, tmp_path: Path
) -> None:
    """`predict` writes what transformers' own generate writes after the prompt, under the run's `generation:`
    settings (here edited in a copy of the run: 12 new tokens, no repeated token, so the text is not empty)."""
    import shutil

    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    shutil.copytree(clm_run, run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["generation"] = {**recipe.get("generation", {}), "max_new_tokens": 12, "no_repeat_ngram_size": 1}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = invoke("predict", run, "--text", "The import statement")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["text"] == "The import statement"

    model = AutoModelForCausalLM.from_pretrained(run)
    tokenizer = AutoTokenizer.from_pretrained(run)
    ids = tokenizer("The import statement", return_tensors="pt")
    out = model.generate(
        **ids, max_new_tokens=12, do_sample=False, no_repeat_ngram_size=1, pad_token_id=tokenizer.pad_token_id
    )
    new = out[0, ids["input_ids"].shape[1] :]
    assert len(new) == 12
    expected = tokenizer.decode(new, skip_special_tokens=True).strip()
    assert expected and record["continuation"] == expected


def test_mlm_predict_fills_each_mask_with_its_top_tokens_and_their_probabilities(mlm_run: Path) -> None:
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    text = "the [MASK] of python is a [MASK] language"
    result = invoke("predict", mlm_run, "--text", text, "--text", "no mask here")
    assert result.exit_code == 0, result.output
    filled, plain = (json.loads(line) for line in result.stdout.splitlines())
    assert len(filled["fills"]) == 2 and all(len(fill) == 5 for fill in filled["fills"])
    tokenizer = AutoTokenizer.from_pretrained(mlm_run)
    model = AutoModelForMaskedLM.from_pretrained(mlm_run).eval()
    encoded = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits[0]
    first_mask = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0])
    top = logits[first_mask].softmax(-1).topk(5)
    assert [f["token"] for f in filled["fills"][0]] == tokenizer.convert_ids_to_tokens(top.indices.tolist())
    assert [f["score"] for f in filled["fills"][0]] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert plain["fills"] == [] and "[MASK]" in plain["note"]


def test_mlm_predict_refuses_a_row_without_text_in_one_line(mlm_run: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"sentence": "the [MASK] sat ."}\n{"text": ["the [MASK]"]}\n')
    result = invoke("predict", mlm_run, "--file", rows)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "predict input 1 has no `text` field holding text (fields: sentence)" in result.output
    long_text = "the cat sat on the mat . " * 80 + "the [MASK] ran ."
    result = invoke("predict", mlm_run, "--text", long_text)
    assert result.exit_code == 0 and "lies past the first" in json.loads(result.stdout)["note"], result.output
