"""`llmkit export --format onnx`: parity with PyTorch on the run's eval data for every exported head
(pair classification, LoRA classification merged first, extractive QA, causal LM), predict on the export
through onnxruntime giving the run folder's own records, int8 agreement, and the refusals (not a run,
unsupported task, foreign or non-empty OUT_DIR, a parity miss, a missing extra)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO
from tests.tiny_recipe import clm_recipe, invoke, one_thread, tiny_bert, write_corpus, write_recipe

pytest.importorskip("onnxruntime")

DATA = REPO / "recipes" / "ci" / "data"
TEXTS = ["a delightful and funny story .", "i found the cast middling , really ordinary .", "dull and awful ."]


def train(recipe: dict[str, Any], path: Path) -> Path:
    from llmkit import pipeline
    from llmkit.recipe import load_recipe

    with one_thread():
        pipeline.train(load_recipe(write_recipe(path, recipe)))
    return Path(recipe["training"]["output_dir"])


def training(output: Path, steps: int, **more: Any) -> dict[str, Any]:
    return {
        "output_dir": str(output),
        "max_steps": steps,
        "per_device_train_batch_size": 16,
        "learning_rate": 3.0e-3,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 5,
        **more,
    }


def write_pairs(path: Path, count: int, seed: int) -> Path:
    """Text pairs whose label is whether the second text agrees (a rule a 1-layer BERT learns at once)."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my sister", "the old man", "a child"]
    rows = []
    for _ in range(count):
        agrees = rng.random() < 0.5
        reply = rng.choice(["yes , that is right", "true , i agree"]) if agrees else rng.choice(["no , not at all"])
        rows.append({"premise": f"{rng.choice(subjects)} sleeps", "reply": reply, "verdict": ["no", "yes"][agrees]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four small trained run folders: BERT pair classification, GPT-2 causal LM, a LoRA GPT-2 classifier on
    that LM, BERT extractive QA."""
    root = tmp_path_factory.mktemp("export")
    pair = {
        "task": "classification",
        "model": {"from_config": tiny_bert()},
        "tokenizer": {"train": {"kind": "wordpiece", "vocab_size": 120, "min_frequency": 1}},
        "data": {
            "train": str(write_pairs(root / "pairs-train.jsonl", 160, 1)),
            "eval": str(write_pairs(root / "pairs-eval.jsonl", 48, 2)),
            "columns": {"text": "premise", "text_pair": "reply", "label": "verdict"},
            "max_length": 24,
        },
        "training": training(root / "pair", 20),
    }
    clm = clm_recipe(write_corpus(root / "corpus.txt"), root / "clm", max_steps=40, report_to="none")
    clm["training"].update(eval_strategy="no", save_strategy="no")
    clm["generation"] = {"max_new_tokens": 12}
    lora = {
        "task": "classification",
        "model": {"name_or_path": str(root / "clm")},
        "data": {
            "train": str(DATA / "reviews-train.jsonl"),
            "eval": str(DATA / "reviews-eval.jsonl"),
            "columns": {"text": "sentence", "label": "sentiment"},
            "max_length": 32,
            "max_eval_samples": 48,
        },
        "training": training(root / "lora", 20, learning_rate=3.0e-2),
        "peft": {"r": 4, "alpha": 8, "dropout": 0.0},
    }
    qa = {
        "task": "qa",
        "model": {"from_config": {**tiny_bert(), "num_attention_heads": 2}},
        "tokenizer": {"train": {"kind": "wordpiece", "vocab_size": 200, "min_frequency": 1}},
        "data": {
            "train": str(DATA / "people-train.json"),
            "eval": str(DATA / "people-eval.json"),
            "max_length": 48,
            "max_eval_samples": 40,
        },
        "qa": {"doc_stride": 16},
        "training": training(root / "qa", 30),
    }
    found = {}
    for name, recipe in (("pair", pair), ("clm", clm), ("lora", lora), ("qa", qa)):
        found[name] = train(recipe, root / f"{name}.yaml")
    return found


def export(run: Path, out: Path, *options: str) -> Any:
    with one_thread():
        return invoke("export", run, out, "--samples", "48", *options)


def report(out: Path) -> dict[str, Any]:
    return json.loads((out / "export.json").read_text())


def predicted(folder: Path, *arguments: str) -> list[dict[str, Any]]:
    with one_thread():
        result = invoke("predict", folder, *arguments)
    assert result.exit_code == 0, result.output[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def no_torch_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Predict on an export must not build a PyTorch model."""
    from llmkit import pipeline

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("predict on an ONNX export loaded a PyTorch model")

    monkeypatch.setattr(pipeline, "load_model", refuse)


def onnx_matches_torch(run: Path, out: Path, tolerance: float) -> float:
    """Our own check, independent of export.json: onnxruntime on the export vs the run's PyTorch model."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(run).eval()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    batch = tokenizer(["the cat sleeps", "a child sleeps"], ["no , not at all", "true , i agree"], padding=True)
    feeds = {name: np.asarray(batch[name], dtype=np.int64) for name in names}
    with torch.no_grad():
        expected = model(**{k: torch.tensor(v) for k, v in feeds.items()}).logits.numpy()
    got = session.run(["logits"], feeds)[0]
    largest = float(np.abs(expected - got).max())
    assert largest <= tolerance
    return largest


# --------------------------------------------------------------------------- each head


def test_pair_classification_export_int8_and_predict(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "pair-onnx"
    result = export(runs["pair"], out, "--quantize", "int8")
    assert result.exit_code == 0, result.output[-3000:]
    assert "parity on" in result.stdout and "argmax agreement" in result.stdout
    figures = report(out)
    parity = figures["parity"]
    assert parity["passed"] and parity["max_abs_diff"] <= parity["tolerance"] == 1e-4
    assert parity["argmax_agreement"] == 1.0 and parity["examples"] == 48
    assert parity["label_accuracy_onnx"] == parity["label_accuracy_pytorch"]
    assert figures["inputs"] == ["input_ids", "token_type_ids", "attention_mask"]
    assert 0.5 <= figures["int8"]["argmax_agreement"] <= 1.0
    for size in (1, 32):
        row = figures["latency_ms"][f"batch_{size}"]
        assert row["pytorch"] > 0 and row["onnxruntime"] > 0 and row["onnxruntime_int8"] > 0
    sizes = figures["size_bytes"]
    assert sizes["onnx_int8"] < sizes["onnx"] and sizes["onnx"] > 0.5 * sizes["pytorch_parameters"]
    assert {"model.onnx", "model.int8.onnx", "config.json", "tokenizer.json", "recipe.yaml", ".llmkit"} <= {
        p.name for p in out.iterdir()
    }
    assert not any(out.glob("*.safetensors"))
    print(f"pair classification: {json.dumps(parity)}; int8 {figures['int8']['argmax_agreement']:.3f}")
    print(f"latency ms: {json.dumps(figures['latency_ms'])}; sizes {json.dumps(sizes)}")
    onnx_matches_torch(runs["pair"], out, 1e-4)

    rows = tmp_path / "rows.jsonl"
    pairs = [("the cat sleeps", "yes , that is right"), ("a dog sleeps", "no , not at all"), ("a child", "i agree")]
    rows.write_text("".join(json.dumps({"premise": p, "reply": r}) + "\n" for p, r in pairs))
    from_run = predicted(runs["pair"], "--file", str(rows))
    no_torch_model(monkeypatch)
    from_export = predicted(out, "--file", str(rows))
    assert from_export == from_run and len(from_run) == 3
    assert {record["label"] for record in from_run} <= {"no", "yes"}


def test_lora_run_is_merged_then_exported(runs: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "lora-onnx"
    result = export(runs["lora"], out)
    assert result.exit_code == 0, result.output[-3000:]
    figures = report(out)
    assert figures["merged_lora"] is True and figures["head"] == "AutoModelForSequenceClassification"
    assert figures["parity"]["passed"] and figures["parity"]["argmax_agreement"] == 1.0
    assert "int8" not in figures and not (out / "model.int8.onnx").exists()
    print(f"lora classification: {json.dumps(figures['parity'])}")
    arguments = [arg for text in TEXTS for arg in ("--text", text)]
    from_run = predicted(runs["lora"], *arguments)
    no_torch_model(monkeypatch)
    assert predicted(out, *arguments) == from_run


def test_extractive_qa_export_and_predict(runs: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "qa-onnx"
    result = export(runs["qa"], out, "--quantize", "int8")
    assert result.exit_code == 0, result.output[-3000:]
    figures = report(out)
    assert figures["outputs"] == ["start_logits", "end_logits"]
    assert figures["parity"]["passed"] and figures["parity"]["argmax_agreement"] == 1.0
    print(f"qa: {json.dumps(figures['parity'])}; int8 {figures['int8']['argmax_agreement']:.3f}")
    questions = tmp_path / "questions.jsonl"
    rows = [
        {"question": "Where does Emil live?", "context": "Jonas works as a pilot. Emil lives in Lima."},
        {"question": "What is the job of Kira?", "context": "Kira works as a nurse. Luis lives in Cairo."},
    ]
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    from_run = predicted(runs["qa"], "--file", str(questions))
    no_torch_model(monkeypatch)
    assert predicted(out, "--file", str(questions)) == from_run


def test_causal_lm_export_logits_and_greedy_predict(runs: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "clm-onnx"
    result = export(runs["clm"], out)
    assert result.exit_code == 0, result.output[-3000:]
    figures = report(out)
    assert figures["inputs"] == ["input_ids", "attention_mask", "position_ids"]
    assert figures["kv_cache"] is False and "greedy" in figures["generation"]
    assert figures["parity"]["passed"] and figures["parity"]["argmax_agreement"] == 1.0
    print(f"clm: {json.dumps(figures['parity'])}")
    # prompts of different lengths: batched generation left-pads, so the position ids matter
    arguments = ["--text", "the cat", "--text", "my sister follows the garden", "--text", "a dog sees"]
    from_run = predicted(runs["clm"], *arguments)
    assert any(record["continuation"] for record in from_run), from_run
    no_torch_model(monkeypatch)
    assert predicted(out, *arguments) == from_run


# --------------------------------------------------------------------------- refusals


def one_line(result: Any, code: int, words: str) -> None:
    assert result.exit_code == code, result.output[-2000:]
    assert words in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_parity_miss_exits_1_and_writes_nothing(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "strict"
    result = export(runs["pair"], out, "--tolerance", "1e-12")
    one_line(result, 1, "parity check failed")
    assert not out.exists() or not any(out.iterdir())
    assert not any(tmp_path.glob(".strict*"))  # no staging folder left behind


def test_not_a_run_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    one_line(invoke("export", tmp_path / "empty", tmp_path / "out"), 2, "is not a run folder")
    one_line(invoke("export", tmp_path / "missing", tmp_path / "out"), 2, "is not a run folder")


def test_unsupported_task_is_one_line_exit_2(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    run = tmp_path / "mlm"
    BertForMaskedLM(
        BertConfig(**{k: v for k, v in tiny_bert().items() if k != "model_type"}, vocab_size=50)
    ).save_pretrained(run)
    write_recipe(
        run / "recipe.yaml",
        {
            "task": "mlm",
            "model": {"name_or_path": str(run)},
            "data": {"train": "x.txt"},
            "training": {"output_dir": str(run)},
        },
    )
    one_line(invoke("export", run, tmp_path / "out"), 2, "does not support task `mlm`")
    assert not (tmp_path / "out").exists()


def test_refuses_other_formats_a_foreign_out_dir_and_the_run_itself(runs: dict[str, Path], tmp_path: Path) -> None:
    one_line(invoke("export", runs["pair"], tmp_path / "o", "--format", "tflite"), 2, "--format tflite")
    one_line(invoke("export", runs["pair"], tmp_path / "o", "--quantize", "int4"), 2, "--quantize int4")
    one_line(invoke("export", runs["pair"], runs["pair"]), 2, "must differ from RUN_DIR")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    one_line(invoke("export", runs["pair"], foreign), 2, "is not empty")
    one_line(invoke("export", runs["pair"], foreign, "--overwrite"), 2, "llmkit did not write it")
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_missing_extra_names_the_install_command(runs: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: find_spec gives None
    one_line(invoke("export", runs["pair"], tmp_path / "o"), 2, "pip install 'llmkit[export]'")
