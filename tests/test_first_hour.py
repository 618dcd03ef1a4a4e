"""The first hour of a new user: inputs and outputs in the layouts they already have, defaults that fit the
model they chose, messages that say what to do, and a console that reads well in a log file.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.tiny_recipe import clm_recipe, invoke, task_recipe, tiny_bert, write_recipe

REVIEWS = REPO / "recipes" / "ci" / "data"


def classifier_recipe(output: Path, **changes: Any) -> dict[str, Any]:
    """Three-class sentiment on the shipped reviews, a 1-layer BERT from config: seconds to train."""
    content = task_recipe(
        "classification",
        REVIEWS / "reviews-train.jsonl",
        output,
        eval=REVIEWS / "reviews-eval.jsonl",
        data={"columns": {"text": "sentence", "label": "sentiment"}},
        training={"max_steps": 20, "learning_rate": 3e-3, "logging_steps": 5},
    )
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        content.setdefault(section, {})[key] = value
    return content


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("first-hour")
    recipe = write_recipe(root / "reviews.yaml", classifier_recipe(root / "run"))
    result = invoke("finetune", recipe)
    assert result.exit_code == 0, result.stderr[-2000:]
    return {"root": root, "run": root / "run", "recipe": recipe, "result": result}


# ----------------------------------------------------------------------------- console


def test_the_console_is_one_clean_line_per_logging_step_off_a_terminal(classifier: dict[str, Any]) -> None:
    output = classifier["result"].output
    steps = re.findall(r"^step (\d+)/20  loss \d+\.\d{4}  lr [\d.e+-]+  [\d,]+ tok/s", output, flags=re.M)
    assert steps[:4] == ["5", "10", "15", "20"], output[-3000:]
    assert "\r" not in output and "\x1b[" not in output  # no progress-bar rewrites, no colour codes
    for noise in ("LOAD REPORT", "FutureWarning", "it/s]", "{'loss'"):
        assert noise not in output
    assert not output.startswith("\n"), "stray blank lines before the first message"


def test_a_checkpoint_with_its_own_head_loads_without_a_report(classifier: dict[str, Any], tmp_path: Path) -> None:
    content = classifier_recipe(tmp_path / "again", training__max_steps=2)
    content["model"] = {"name_or_path": str(classifier["run"])}
    content["tokenizer"] = {}
    content["data"]["train"] = str(REVIEWS / "reviews-train.jsonl")
    result = invoke("finetune", write_recipe(tmp_path / "r.yaml", content))
    assert result.exit_code == 0, result.stderr[-2000:]
    assert "LOAD REPORT" not in result.output and "new weights" not in result.output  # nothing was missing


def test_verbose_leaves_the_libraries_alone(monkeypatch) -> None:
    import warnings

    from llmkit import console

    silenced: list[Any] = []
    monkeypatch.setattr(warnings, "filterwarnings", lambda *args, **kwargs: silenced.append(args))
    monkeypatch.setenv("LLMKIT_VERBOSE", "1")
    console.quiet_libraries()
    assert silenced == []
    monkeypatch.setenv("LLMKIT_VERBOSE", "0")
    console.quiet_libraries()
    assert ("ignore",) in [args[:1] for args in silenced]


def test_version() -> None:
    from llmkit import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"llmkit {__version__}"


def test_recipes_lists_whole_names_and_a_description_on_80_columns() -> None:
    result = invoke("recipes", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    names = sorted(str(p.relative_to(REPO / "recipes").with_suffix("")) for p in (REPO / "recipes").rglob("*.yaml"))
    lines = result.stdout.splitlines()
    for name in names:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name}  ["))
        assert len(lines[index + 1].strip()) > 20, lines[index + 1]  # the description line


# ----------------------------------------------------------------------------- predict


def test_predict_reads_a_csv_keeps_its_fields_and_writes_output(classifier: dict[str, Any], tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (REVIEWS / "reviews-eval.jsonl").read_text().splitlines()[:5]]
    table = tmp_path / "mine.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text", "label"])
        writer.writeheader()
        for number, row in enumerate(rows):
            writer.writerow({"id": f"r{number}", "text": row["sentence"], "label": row["sentiment"]})
    output = tmp_path / "out" / "predictions.jsonl"
    result = invoke("predict", classifier["run"], "--file", table, "--output", output)
    assert result.exit_code == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"r{n}" for n in range(5)]  # joinable, in order, header not scored
    assert all(r["label"] in ("negative", "neutral", "positive") and "probability" in r for r in records)
    assert [r.get("reference", r["label"]) for r in records] == [row["sentiment"] for row in rows]
    again = invoke("predict", classifier["run"], "--file", table, "--output", output)
    assert again.exit_code == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize("layout", [".tsv", ".json", ".txt", "stdin"])
def test_predict_reads_every_layout_the_loader_reads(classifier: dict[str, Any], tmp_path: Path, layout: str) -> None:
    texts = ["a delightful and funny story.", "i found the acting conventional, really typical."]
    if layout == ".tsv":
        path = tmp_path / "in.tsv"
        path.write_text("text\tsource\n" + "".join(f"{t}\tweb\n" for t in texts))
    elif layout == ".json":
        path = tmp_path / "in.json"
        path.write_text(json.dumps([{"text": t, "source": "web"} for t in texts]))
    else:
        path = tmp_path / "in.txt"
        path.write_text("\n".join(texts) + "\n")
    if layout == "stdin":
        result = invoke("predict", classifier["run"], "--file", "-", input=path.read_text())
    else:
        result = invoke("predict", classifier["run"], "--file", path)
    assert result.exit_code == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["text"] for r in records] == texts
    if layout in (".tsv", ".json"):
        assert all(r["source"] == "web" for r in records)


def test_predict_help_lists_each_tasks_fields() -> None:
    text = " ".join(invoke("predict", "--help").stdout.split())
    assert "classification: text [text_pair]" in text and "qa: question context" in text


# ----------------------------------------------------------------------------- eval, model card


def test_eval_says_what_it_evaluated_where_it_wrote_and_compares(classifier: dict[str, Any]) -> None:
    result = invoke("eval", classifier["recipe"])
    assert result.exit_code == 0, result.stderr[-2000:]
    assert f"on {REVIEWS / 'reviews-eval.jsonl'}" in result.stdout
    assert "training run's eval" in result.stdout
    assert f"metrics written to {classifier['run'] / 'eval' / 'reviews-eval' / 'metrics.json'}" in result.stdout


def test_model_card_separates_training_and_eval_and_names_the_model(classifier: dict[str, Any]) -> None:
    card = (classifier["run"] / "README.md").read_text()
    training = card[card.index("## Training") : card.index("## Evaluation")]
    evaluation = card[card.index("## Evaluation") : card.index("## Load it")]
    assert "train_loss" in training and "eval_accuracy" not in training
    assert "eval_accuracy" in evaluation and "train_loss" not in evaluation
    assert "`bert` built from config (num_hidden_layers=1" in card and "{" not in card.split("## Training")[0]


# ----------------------------------------------------------------------------- defaults that fit


def test_an_unset_max_length_is_the_models_own_limit(tmp_path: Path) -> None:
    """A default is never an error: 64 positions and no max_length → 64; the real error is the one reported."""
    corpus = tmp_path / "train.txt"
    corpus.write_text("the cat sees the ball in the morning.\n" * 200)
    content = clm_recipe(corpus, tmp_path / "run", max_steps=2)
    del content["data"]["max_length"]  # the model has 64 positions
    result = invoke("pretrain", write_recipe(tmp_path / "r.yaml", content))
    assert result.exit_code == 0, result.stderr[-2000:]
    assert "max_length: 64" in (tmp_path / "run" / "recipe.yaml").read_text()
    content["data"]["train"] = str(tmp_path / "missing.txt")
    content["training"]["output_dir"] = str(tmp_path / "other")
    result = invoke("pretrain", write_recipe(tmp_path / "r2.yaml", content))
    assert result.exit_code == 2 and "missing.txt" in result.stderr and "data.max_length" not in result.stderr


def qa_recipe(tmp_path: Path, max_length: int, **qa: Any) -> Path:
    content = task_recipe(
        "qa",
        REVIEWS / "people-train.json",
        tmp_path / "qa",
        model={**tiny_bert(), "max_position_embeddings": 256},
        eval=REVIEWS / "people-eval.json",
        data={"max_length": max_length},
        qa=qa,
    )
    return write_recipe(tmp_path / "qa.yaml", content)


def test_extractive_qa_accepts_what_run_qa_accepts(tmp_path: Path) -> None:
    result = invoke("check", qa_recipe(tmp_path, max_length=256, doc_stride=128))
    assert result.exit_code == 0, result.stderr[-2000:]
    assert "qa.doc_stride = 128" in result.stdout
    result = invoke("check", qa_recipe(tmp_path, max_length=128))
    assert result.exit_code == 0 and "qa.doc_stride = 32" in result.stdout  # unset: a quarter of the window
    result = invoke("check", qa_recipe(tmp_path, max_length=32, doc_stride=30))
    assert result.exit_code == 2 and "qa.doc_stride" in result.stderr and "longest question" in result.stderr


def test_lora_without_a_learning_rate_gets_a_lora_default_and_check_warns_when_low(tmp_path: Path) -> None:
    content = classifier_recipe(tmp_path / "lora")
    del content["training"]["learning_rate"]
    content["peft"] = {"r": 4}
    result = invoke("check", write_recipe(tmp_path / "lora.yaml", content))
    assert result.exit_code == 0, result.stderr[-2000:]
    assert "note: using training.learning_rate: 0.001 (the LoRA default)" in result.stdout
    content["training"]["learning_rate"] = 5e-5
    result = invoke("check", write_recipe(tmp_path / "low.yaml", content))
    assert "warning: training.learning_rate 5e-05 is low for LoRA" in result.stdout


def test_check_shows_labels_per_split_and_only_notes_that_apply(tmp_path: Path) -> None:
    rows = [{"text": f"row {i} reads fine", "label": ["a", "b", "c"][i % 3]} for i in range(30)]
    train, evaluation = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluation.write_text("".join(json.dumps(r) + "\n" for r in rows if r["label"] != "c"))
    content = classifier_recipe(tmp_path / "out")
    content["data"] = {"train": str(train), "eval": str(evaluation), "max_length": 16}
    result = invoke("check", write_recipe(tmp_path / "r.yaml", content))
    assert result.exit_code == 0, result.stderr[-2000:]
    assert "labels (3; rows per train / eval): a 10 / 10, b 10 / 10, c 10 / 0" in result.stdout
    assert "warning: label(s) c appear only in the train data" in result.stdout
    assert "window" not in result.stdout and "\n\n" not in result.stdout


# ----------------------------------------------------------------------------- messages


def test_a_hub_id_offline_says_what_to_do(tmp_path: Path) -> None:
    content = classifier_recipe(tmp_path / "out")
    content["model"] = {"name_or_path": "some-org/some-model"}
    content["tokenizer"] = {}
    result = invoke("check", write_recipe(tmp_path / "r.yaml", content), env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 2
    assert "hf download some-org/some-model --local-dir DIR" in result.stderr and "model.name_or_path" in result.stderr


def test_a_missing_data_file_says_where_it_looked(tmp_path: Path, monkeypatch) -> None:
    content = classifier_recipe(tmp_path / "out")
    content["data"] = {"train": "../shared/data/nowhere/train.jsonl"}
    monkeypatch.chdir(tmp_path)
    result = invoke("check", write_recipe(tmp_path / "r.yaml", content), env={"LLMKIT_DATA_DIR": None})
    assert result.exit_code == 2
    assert f"looked in the working folder {tmp_path} and beside the recipe" in result.stderr
    assert "LLMKIT_DATA_DIR" in result.stderr


def test_make_test_and_quickstart_install_what_is_missing_first() -> None:
    for target in ("test", "quickstart"):
        plan = subprocess.run(
            ["make", "-n", target, "VENV=/nonexistent/venv"], cwd=REPO, capture_output=True, text=True, check=False
        )
        assert plan.returncode == 0, plan.stderr
        assert "-m venv /nonexistent/venv" in plan.stdout and "pip install" in plan.stdout
        assert plan.stdout.index("pip install") < plan.stdout.index("pytest" if target == "test" else "llmkit pretrain")


def test_predict_refuses_a_csv_row_that_does_not_match_its_header(classifier: dict[str, Any], tmp_path: Path) -> None:
    table = tmp_path / "ragged.csv"
    table.write_text("text,label\nfine film,positive\nloved it, truly,positive\n")
    result = invoke("predict", classifier["run"], "--file", table)
    assert result.exit_code == 2 and "line 3 does not have the header's 2 fields" in result.stderr
