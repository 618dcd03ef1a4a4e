"""Multiple choice: the BERT head and GPT-2 likelihood scoring end to end through the CLI, the decoder's score
against a hand computation, SWAG's layout (a list of ending columns), bad input, predict, LoRA and merge."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.tiny_recipe import invoke, one_thread

TRAIN = REPO / "recipes/ci/data/choices-train.jsonl"
EVAL = REPO / "recipes/ci/data/choices-eval.jsonl"
DATA = [f"data.train={TRAIN}", f"data.eval={EVAL}"]
PILOT = {
    "context": "the pilot , who often flies the plane and checks the wings , dreamt that the moon eats a star .",
    "question": "then the pilot",
    "choices": ["turns into a cloud", "lands on the runway", "eats a star"],
}


def finetune(recipe: str | Path, output: Path, *overrides: str) -> Path:
    with one_thread():
        result = invoke("finetune", recipe, f"training.output_dir={output}", *overrides)
    assert result.exit_code == 0, result.output
    return output


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def predict(run: Path, *rows: dict[str, Any]) -> list[dict[str, Any]]:
    with one_thread():
        result = invoke("predict", run, *[arg for row in rows for arg in ("--text", json.dumps(row))])
    assert result.exit_code == 0, result.output
    return json_lines(result.stdout)


@pytest.fixture
def bert_run(ci_run: Callable[[str], Path]) -> Path:
    return ci_run("tiny-bert-multiple-choice")


@pytest.fixture
def gpt2_run(ci_run: Callable[[str], Path]) -> Path:
    return ci_run("tiny-gpt2-multiple-choice")


def test_bert_head_meets_its_gates_and_writes_scored_predictions(bert_run: Path) -> None:
    metrics = json.loads((bert_run / "metrics.json").read_text())
    assert metrics["eval_accuracy"] >= 0.6, metrics  # chance is about 0.27
    assert json.loads((bert_run / "config.json").read_text())["architectures"] == ["BertForMultipleChoice"]
    records = [json.loads(line) for line in (bert_run / "predictions.jsonl").read_text().splitlines()]
    gold = [json.loads(line) for line in EVAL.read_text().splitlines()]
    assert len(records) == len(gold) and {len(row["choices"]) for row in gold} == {3, 4}
    for record, row in zip(records, gold, strict=True):
        assert (record["context"], record["question"], record["choices"]) == (
            row["context"],
            row["question"],
            row["choices"],
        )
        assert record["reference"] == row["label"] and len(record["scores"]) == len(row["choices"])
        assert record["label"] == max(range(len(record["scores"])), key=record["scores"].__getitem__)
        assert record["choice"] == row["choices"][record["label"]]
    assert sum(r["label"] == r["reference"] for r in records) / len(records) == pytest.approx(metrics["eval_accuracy"])
    with one_thread():
        result = invoke("eval", "ci/tiny-bert-multiple-choice", "--check", "--checkpoint", bert_run, *DATA)
    assert result.exit_code == 0 and "expectations met" in result.output, result.output


def test_predict_picks_the_ending_and_prints_every_score(bert_run: Path, tmp_path: Path) -> None:
    [row] = predict(bert_run, PILOT)
    assert (row["label"], row["choice"]) == (1, "lands on the runway") and len(row["scores"]) == 3
    assert row["choices"] == PILOT["choices"] and row["question"] == PILOT["question"]
    file = tmp_path / "rows.jsonl"
    file.write_text("".join(json.dumps({**PILOT, "label": 0}) + "\n" for _ in range(2)))
    result = invoke("predict", bert_run, "--file", file)
    assert result.exit_code == 0, result.output
    assert [(r["label"], r["reference"]) for r in json_lines(result.stdout)] == [(1, 0), (1, 0)]


def test_gpt2_scores_choices_with_its_language_model_and_beats_chance(gpt2_run: Path) -> None:
    metrics = json.loads((gpt2_run / "metrics.json").read_text())
    # chance is about 0.27; telling only the absurd endings apart, about 0.75: the context is used
    assert metrics["eval_accuracy"] >= 0.85, metrics
    assert json.loads((gpt2_run / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    with one_thread():
        result = invoke("eval", "ci/tiny-gpt2-multiple-choice", "--check", "--checkpoint", gpt2_run, *DATA)
    assert result.exit_code == 0 and "expectations met" in result.output, result.output


def test_decoder_picks_the_ending_that_fits_the_context(gpt2_run: Path) -> None:
    choices = ["lands on the runway", "slices fresh bread", "eats a star"]
    chef = "the chef , who often bakes a sweet cake and stirs the hot soup , dreamt that the moon eats a star ."
    rows = predict(
        gpt2_run, {**PILOT, "choices": choices}, {"context": chef, "question": "then the chef", "choices": choices}
    )
    assert [row["choice"] for row in rows] == choices[:2]


def test_decoder_score_is_the_mean_log_likelihood_of_the_choice_tokens(gpt2_run: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gpt2_run).eval()
    tokenizer = AutoTokenizer.from_pretrained(gpt2_run)
    prompt = tokenizer(f"{PILOT['context']} {PILOT['question']}")["input_ids"]
    expected = []
    for choice in PILOT["choices"]:
        ending = tokenizer(f" {choice}")["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ending])).logits[0]
        logprobs = torch.log_softmax(logits.double(), -1)
        expected.append(sum(float(logprobs[len(prompt) + i - 1, t]) for i, t in enumerate(ending)) / len(ending))
    assert len({len(tokenizer(f" {c}")["input_ids"]) for c in PILOT["choices"]}) > 1  # normalising matters
    [row] = predict(gpt2_run, PILOT)
    assert row["scores"] == pytest.approx(expected, abs=1e-4)
    assert row["label"] == max(range(3), key=expected.__getitem__) == 1


def test_swag_layout_gathers_ending_columns_into_choices(tmp_path: Path) -> None:
    """sent1, sent2, ending0..3, label (the HF run_swag layout) through `data.columns`."""
    for name, source in (("train", TRAIN), ("eval", EVAL)):
        rows = [json.loads(line) for line in source.read_text().splitlines()]
        swag = [
            {"sent1": r["context"], "sent2": r["question"], **{f"ending{i}": c for i, c in enumerate(r["choices"])}}
            | {"label": r["label"]}
            for r in rows
            if len(r["choices"]) == 4
        ]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in swag))
    columns = "{context: sent1, question: sent2, choices: [ending0, ending1, ending2, ending3], label: label}"
    run = finetune(
        "ci/tiny-bert-multiple-choice",
        tmp_path / "run",
        f"data.train={tmp_path / 'train.jsonl'}",
        f"data.eval={tmp_path / 'eval.jsonl'}",
        f"data.columns={columns}",
    )
    assert json.loads((run / "metrics.json").read_text())["eval_accuracy"] >= 0.6
    first = json.loads((run / "predictions.jsonl").read_text().splitlines()[0])
    row = json.loads((tmp_path / "eval.jsonl").read_text().splitlines()[0])
    assert first["context"] == row["sent1"] and first["question"] == row["sent2"]
    assert first["choices"] == [row[f"ending{i}"] for i in range(4)] and first["reference"] == row["label"]


def test_check_shows_the_right_choice_marked(tmp_path: Path) -> None:
    result = invoke("check", "ci/tiny-bert-multiple-choice", *DATA)
    assert result.exit_code == 0, result.output
    first = json.loads(TRAIN.read_text().splitlines()[0])
    assert f"[[{first['question']} {first['choices'][first['label']]}]]" in result.output
    assert "choices per row: 3, 4" in result.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": 7}, "data column `label` (role `label`): train row 2 has label 7, but the row has"),
        ({"label": "two"}, "data column `label` (role `label`) must hold the index of the right choice"),
        ({"choices": []}, "data column `choices` (role `choices`) is empty in train row 2"),
        ({"choices": ["flies", ""]}, "choice 1 of train row 2 is empty"),
        ({"choices": ["flies"], "label": 0}, "train row 2 has one choice; a question needs at least two"),
        ({"label": 1.5}, "train row 2 has 1.5"),  # the other rows' labels read as floats too: 1.0 is fine
    ],
)
def test_bad_rows_are_one_line_naming_column_split_and_row(change: dict, message: str, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in TRAIN.read_text().splitlines()[:20]]
    rows[2] = {**rows[2], **change}
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = invoke("check", "ci/tiny-bert-multiple-choice", f"data.train={bad}", f"data.eval={EVAL}")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_choices_that_are_not_a_list_are_refused(tmp_path: Path) -> None:
    rows = [{**json.loads(line), "choices": "flies the plane"} for line in TRAIN.read_text().splitlines()[:5]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = invoke("check", "ci/tiny-bert-multiple-choice", f"data.train={bad}", f"data.eval={EVAL}")
    assert result.exit_code == 2 and "must hold a list of texts" in result.output, result.output


def test_predict_rejects_text_that_is_not_a_row(bert_run: Path) -> None:
    result = invoke("predict", bert_run, "--text", "which ending?")
    assert result.exit_code == 2 and "JSON object" in result.output, result.output
    result = invoke("predict", bert_run, "--text", json.dumps({"context": "a", "choices": "b"}))
    assert result.exit_code == 2 and "`choices` must be a non-empty list" in result.output, result.output


def test_lora_trains_the_head_in_full_and_merge_keeps_the_scores(bert_run: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    content = yaml.safe_load((REPO / "recipes/ci/tiny-bert-multiple-choice.yaml").read_text())
    content.pop("tokenizer")
    content["model"] = {"name_or_path": str(bert_run)}
    content["data"].update(train=str(TRAIN), eval=str(EVAL))
    content["training"].update(max_steps=20, learning_rate=1e-2, save_strategy="no")
    content["peft"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "auto"}
    recipe = tmp_path / "lora.yaml"
    recipe.write_text(yaml.safe_dump(content))
    adapter = finetune(recipe, tmp_path / "lora")
    assert json.loads((adapter / "metrics.json").read_text())["eval_accuracy"] >= 0.6
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
        assert any("classifier" in n and "lora" not in n for n in names), names  # the head is saved whole
        assert all(weights.get_tensor(n).abs().sum() > 0 for n in names if "lora_B" in n)
    result = invoke("merge", adapter, tmp_path / "merged")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    before, after = predict(adapter, PILOT), predict(tmp_path / "merged", PILOT)
    assert before[0]["scores"] == pytest.approx(after[0]["scores"], abs=1e-4)
    assert before[0]["label"] == after[0]["label"] == 1


@pytest.mark.slow
def test_minilm_swag_fixture_meets_the_reference_gate(data_dir: Path, tmp_path: Path, minilm: Path) -> None:
    """run_swag's test protocol (max_steps 20, warmup 2, lr 2e-4, batch 2/1, train = eval = the 10-row fixture)."""
    run = finetune(REPO / "recipes/minilm-swag.yaml", tmp_path / "run", f"model.name_or_path={minilm}")
    metrics = json.loads((run / "metrics.json").read_text())
    print(f"\nminilm-swag: eval_accuracy {metrics['eval_accuracy']:.3f} eval_loss {metrics['eval_loss']:.4f}")
    assert metrics["eval_accuracy"] >= 0.8, metrics
