"""A battery of bad recipes, bad data files and bad command lines run against the CLI.

Every case must: exit with code 2; print exactly one line on stderr, `error: ...`, naming the recipe field,
data column or path at fault; print no traceback; leave no output folder behind (or leave an existing one
untouched); and be found before any model is built (`build_model` is replaced by a function that fails the
test). Most cases run the CLI in-process; a few run real subprocesses to prove what reaches a terminal.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tiny_recipe import (
    clm_recipe,
    invoke,
    run_llmkit,
    snapshot,
    tiny_bert,
    write_corpus,
    write_jsonl,
    write_recipe,
)

Build = Callable[[Path, Path], list[Any]]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good and bad data files, shared by every case (cases never write here)."""
    root = tmp_path_factory.mktemp("errors-data")
    write_corpus(root / "train.txt")
    write_corpus(root / "eval.txt", lines=40, seed=1)
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("\n\n\n\n")
    (root / "short.txt").write_text("the cat sees the ball.\n")
    (root / "sheet.xlsx").write_text("not a spreadsheet")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 40)
    (root / "sentences.csv").write_text("sentence,label\nthe cat sees the ball,1\na dog likes bread,0\n")
    (root / "numbers.csv").write_text("text\n1\n2\n3\n")
    (root / "mixed.jsonl").write_text('{"text": "a cat"}\n{"text": 5}\n{"text": ["a", "list"]}\n')
    (root / "broken.json").write_text('{"text": "a cat"\n{"text": ')
    (root / "broken.parquet").write_text("not parquet at all")
    (root / "quote.csv").write_text('text,b\n"an unterminated quote,1\nc,2\n')
    (root / "mixed-kinds").mkdir()
    write_corpus(root / "mixed-kinds" / "a.txt")
    (root / "mixed-kinds" / "b.jsonl").write_text('{"text": "a json row read as text would be wrong"}\n')
    (root / "no-data-files").mkdir()
    (root / "no-data-files" / "notes.md").write_text("# nothing to train on\n")
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "weights.bin").write_text("x")
    (root / "a-file").write_text("a regular file, not a folder")
    labelled = [{"text": f"row {i} reads fine", "label": i % 2} for i in range(10)]
    write_jsonl(root / "labels.jsonl", labelled)
    write_jsonl(
        root / "labels-none.jsonl",
        [{**row, "label": None if i == 6 else row["label"]} for i, row in enumerate(labelled)],
    )
    write_jsonl(
        root / "labels-mixed.jsonl", [{**row, "label": "pos" if i % 2 else 0} for i, row in enumerate(labelled)]
    )
    write_jsonl(root / "labels-str.jsonl", [{**row, "label": "pos"} for row in labelled[:4]])
    (root / "text-only.csv").write_text("text\nhello there\nbye now\n")
    write_jsonl(root / "labels-single.jsonl", [{**row, "label": "pos"} for row in labelled])
    write_jsonl(root / "labels-other.jsonl", [{**row, "label": 2 + i % 2} for i, row in enumerate(labelled[:4])])
    context = "Alice met Bob in the park."
    squad = [
        {
            "id": f"q{i}",
            "question": "Who did Alice meet?",
            "context": context,
            "answers": {"text": ["Bob"], "answer_start": [10 if i != 3 else 2]},
        }
        for i in range(8)
    ]
    write_jsonl(root / "squad-bad-start.jsonl", squad)
    from transformers import GPT2Config

    (root / "config-only-run").mkdir()  # enough of a run folder for `eval` to reach the data probe
    GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=64).to_json_file(root / "config-only-run" / "config.json")
    # a well-formed safetensors file without tensors: never loaded, the probe stops first
    (root / "config-only-run" / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")
    (root / "config-only").mkdir()
    (root / "config-only" / "config.json").write_text((root / "config-only-run" / "config.json").read_text())
    return root


@pytest.fixture(autouse=True)
def no_model_may_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every error here must be found before the model is built (and so before any training step)."""

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was built: the error was not found early")

    monkeypatch.setattr("llmkit.models.build_model", fail)


def assert_user_error(result: Any, *needles: str) -> str:
    """Exit 2, one `error:` line naming the problem, no traceback; returns the line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# ----------------------------------------------------------------------------- case builders


def at(content: dict[str, Any], dotted: str) -> tuple[dict[str, Any], str]:
    *parents, key = dotted.split(".")
    for part in parents:
        content = content.setdefault(part, {})
    return content, key


def change(*edits: tuple[str, Any], args: tuple[str, ...] = (), command: str = "pretrain") -> Build:
    """A case: the tiny recipe with `edits` (dotted key, value; `{ws}` in a value is the data folder;
    the value DROP removes the key), run with `command` and extra `args`."""

    def build(ws: Path, tmp: Path) -> list[Any]:
        content = clm_recipe(ws / "train.txt", tmp / "out")
        for dotted, value in edits:
            parent, key = at(content, dotted)
            if value is DROP:
                parent.pop(key, None)
            else:
                parent[key] = yaml.safe_load(yaml.safe_dump(value).replace("{ws}", str(ws)))
        return [command, write_recipe(tmp / "recipe.yaml", content), *(a.replace("{ws}", str(ws)) for a in args)]

    return build


def recipe_text(text: str | bytes, files: dict[str, str] | None = None) -> Build:
    """A case whose recipe file has exactly this content (and maybe sibling files, for `extends:`)."""

    def build(ws: Path, tmp: Path) -> list[Any]:
        for name, body in (files or {}).items():
            write_recipe(tmp / name, body)
        return ["pretrain", write_recipe(tmp / "recipe.yaml", text)]

    return build


def command(*argv: str) -> Build:
    return lambda ws, tmp: [a.replace("{ws}", str(ws)).replace("{tmp}", str(tmp)) for a in argv]


DROP = object()
GOOD = yaml.safe_dump(clm_recipe("train.txt", "out"), sort_keys=False)
BERT = tiny_bert(layers=2, hidden=64)


def task_case(task: str, model: dict[str, Any], train: str, *edits: tuple[str, Any]) -> Build:
    """A fine-tuning case for another task: BERT or GPT-2 from config, a tokenizer trained on `train`."""
    kind = "wordpiece" if model["model_type"] == "bert" else "bpe"
    return change(
        ("task", task),
        ("model.from_config", model),
        ("tokenizer.train", {"kind": kind, "vocab_size": 100}),
        ("data.train", train),
        *edits,
        command="finetune",
    )


GPT2 = clm_recipe("t", "o")["model"]["from_config"]

CASES: list[tuple[str, Build, tuple[str, ...]]] = [
    # --- the recipe file
    ("recipe-missing", command("pretrain", "{tmp}/nowhere.yaml"), ("recipe file not found", "nowhere.yaml")),
    ("recipe-not-yaml", recipe_text("task: [clm\nmodel: {"), ("not valid YAML", "line")),
    ("recipe-a-list", recipe_text("- task\n- model\n"), ("must be a mapping",)),
    ("recipe-empty", recipe_text(""), ("must be a mapping",)),
    ("recipe-not-utf8", recipe_text("task: clm # caf\xe9\n".encode("latin-1")), ("not UTF-8",)),
    ("extends-loop", recipe_text("extends: other.yaml\n", {"other.yaml": "extends: recipe.yaml\n"}), ("loops back",)),
    ("extends-missing", recipe_text("extends: base.yaml\ntask: clm\n"), ("recipe file not found", "base.yaml")),
    ("extends-not-a-path", recipe_text("extends: [a, b]\n" + GOOD), ("`extends`", "file path")),
    (
        "duplicate-key",
        recipe_text(GOOD.replace("task: clm\n", "task: clm\ntask: mlm\n")),
        ("`task`", "twice", "lines 1 and 2"),
    ),
    (
        "duplicate-nested-key",
        recipe_text(GOOD.replace("  max_steps: 30\n", "  max_steps: 30\n  max_steps: 3\n")),
        ("`max_steps`", "twice", "lines"),
    ),
    # --- recipe fields
    ("unknown-key", change(("data.max_lenght", 64)), ("data.max_lenght", "did you mean `max_length`")),
    ("unknown-section", change(("trainnig", {})), ("trainnig", "did you mean `training`")),
    ("missing-section", change(("data", DROP)), ("recipe field `data` is required",)),
    ("section-not-mapping", change(("data", "train.txt")), ("recipe field `data`", "a mapping")),
    ("learning-rate-infinite", change(("training.learning_rate", float("inf"))), ("training.learning_rate", "finite")),
    ("learning-rate-absurd", change(("training.learning_rate", 1e30)), ("training.learning_rate", "1000")),
    ("output-dir-empty", change(("training.output_dir", "")), ("training.output_dir", "must name a folder")),
    ("max-steps-zero", change(("training.max_steps", 0)), ("training.max_steps", "trains nothing")),
    (
        "deepspeed-not-installed",
        change(("training.deepspeed", {"zero_optimization": {"stage": 2}})),
        ("deepspeed", "pip install deepspeed"),
    ),
    (
        "deepspeed-not-installed-check",
        change(("training.deepspeed", {"zero_optimization": {"stage": 2}}), command="check"),
        ("pip install deepspeed",),
    ),
    (
        "bitsandbytes-not-installed",
        change(("training.optim", "adamw_bnb_8bit")),
        ("training.optim", "pip install bitsandbytes"),
    ),
    ("comet-not-installed", change(("training.report_to", "comet_ml")), ("training.report_to", "pip install comet-ml")),
    ("neptune-not-installed", change(("training.report_to", ["tensorboard", "neptune"])), ("pip install neptune",)),
    ("negative-learning-rate", change(("training.learning_rate", -1e-4)), ("training.learning_rate", "greater than 0")),
    ("learning-rate-not-number", change(("training.learning_rate", "fast")), ("training.learning_rate", "'fast'")),
    ("max-length-above-positions", change(("data.max_length", 512)), ("data.max_length", "512", "64 positions")),
    ("mlm-probability-above-1", change(("task", "mlm"), ("mlm.probability", 1.5)), ("mlm.probability",)),
    ("mlm-probability-zero", change(("task", "mlm"), ("mlm.probability", 0)), ("mlm.probability",)),
    (
        "task-option-under-data",
        change(("data.doc_stride", 8)),
        ("recipe field `data.doc_stride`", "a task option", "`qa.doc_stride`"),
    ),
    (
        "task-option-under-data-renamed",
        change(("data.mlm_probability", 0.3)),
        ("`data.mlm_probability`", "`mlm.probability`"),
    ),
    ("batch-size-zero", change(("training.per_device_train_batch_size", 0)), ("per_device_train_batch_size",)),
    ("unknown-task", change(("task", "sentiment")), ("recipe field `task`", "sentiment")),
    ("task-for-other-command", change(("task", "classification")), ("`classification` is not for this command",)),
    ("mlm-on-gpt2", change(("task", "mlm")), ("task `mlm`", "gpt2", "AutoModelForMaskedLM")),
    ("expect-malformed", change(("expect", {"perplexity": "about 3"})), ("expect", "perplexity")),
    (
        "env-var-unset",
        change(("data.train", "${LLMKIT_TEST_UNSET_VAR}/train.txt")),
        ("data.train", "LLMKIT_TEST_UNSET_VAR"),
    ),
    ("eval-and-validation-split", change(("data.eval", "{ws}/eval.txt")), ("data.eval", "data.validation_split")),
    ("peft-rank-zero", change(("peft", {"r": 0})), ("peft.r",)),
    ("generation-top-p", change(("generation", {"top_p": 2})), ("generation.top_p",)),
    # --- the model
    (
        "model-path-missing",
        change(("model", {"name_or_path": "{ws}/no-such-model"})),
        ("no-such-model", "no such folder"),
    ),
    (
        "model-path-not-a-model",
        change(("model", {"name_or_path": "{ws}/not-a-model"})),
        ("model.name_or_path", "not a model folder"),
    ),
    (
        "model-without-weights",
        change(("model", {"name_or_path": "{ws}/config-only"}), ("tokenizer", DROP)),
        ("model.name_or_path", "config-only", "safetensors"),
    ),
    (
        "model-without-tokenizer",
        change(("model", {"name_or_path": "{ws}/config-only-run"}), ("tokenizer", DROP)),
        ("model.name_or_path", "config-only-run", "no tokenizer files"),
    ),
    ("model-two-sources", change(("model.name_or_path", "{ws}/not-a-model")), ("model", "exactly one")),
    ("model-type-unknown", change(("model.from_config.model_type", "gpt9")), ("model_type", "gpt9", "did you mean")),
    (
        "model-setting-typo",
        change(("model.from_config.n_layers", 2)),
        ("from_config.n_layers", "did you mean `n_layer`"),
    ),
    ("model-setting-wrong-type", change(("model.from_config.n_layer", "two")), ("model.from_config", "n_layer")),
    (
        "model-settings-inconsistent",
        change(("model.from_config.n_head", 3)),
        ("model.from_config", "divisible", "`n_embd`", "n_head"),
    ),
    ("tokenizer-path-missing", change(("tokenizer", {"name_or_path": "{ws}/no-tokenizer"})), ("no-tokenizer",)),
    ("from-config-without-tokenizer", change(("tokenizer", DROP)), ("tokenizer.name_or_path", "tokenizer.train")),
    # --- data files
    ("data-missing", change(("data.train", "{ws}/nowhere.txt")), ("data.train", "not found", "nowhere.txt")),
    ("data-empty", change(("data.train", "{ws}/empty.txt")), ("data.train", "empty.txt", "is empty")),
    ("data-wrong-extension", change(("data.train", "{ws}/sheet.xlsx")), ("data.train", "sheet.xlsx", ".jsonl")),
    ("data-empty-string", change(("data.train", "")), ("data.train",)),
    (
        "data-folder-mixed-kinds",
        change(("data.train", "{ws}/mixed-kinds")),
        ("data.train", "mixed-kinds", ".jsonl, .txt"),
    ),
    ("data-folder-without-files", change(("data.train", "{ws}/no-data-files")), ("data.train", "no-data-files")),
    ("data-not-utf8", change(("data.train", "{ws}/latin1.txt")), ("data.train", "latin1.txt", "not UTF-8")),
    ("data-json-broken", change(("data.train", "{ws}/broken.json")), ("data.train", "broken.json", "json")),
    ("data-parquet-broken", change(("data.train", "{ws}/broken.parquet")), ("data.train", "broken.parquet")),
    ("data-csv-broken", change(("data.train", "{ws}/quote.csv")), ("data.train", "quote.csv", "csv")),
    ("data-hub-offline", change(("data.train", "no-such-org/no-such-dataset")), ("data.train", "no-such-dataset")),
    ("data-builtin-unknown", change(("data.train", "builtin:encyclopedia")), ("data.train", "encyclopedia")),
    (
        "column-mapped-to-missing",
        change(("data.train", "{ws}/sentences.csv"), ("data.columns", {"text": "review"})),
        ("`review`", "role `text`", "columns are: sentence, label"),
    ),
    (
        "column-default-missing",
        change(("data.train", "{ws}/sentences.csv")),
        ("`text`", "columns are: sentence, label", "data.columns.text"),
    ),
    ("column-unknown-role", change(("data.columns", {"label": "label"})), ("data.columns", "`label`", "roles: text")),
    ("column-not-text", change(("data.train", "{ws}/numbers.csv")), ("`text`", "must hold text", "int64")),
    ("column-mixed-json", change(("data.train", "{ws}/mixed.jsonl")), ("`text`", "must hold text", "mixed")),
    (
        "eval-file-missing",
        change(("data.validation_split", DROP), ("data.eval", "{ws}/no-eval.txt")),
        ("data.eval", "no-eval.txt"),
    ),
    (
        "too-little-data",
        change(("data.train", "{ws}/short.txt"), ("data.validation_split", DROP)),
        ("train data", "data.max_length"),
    ),
    ("only-blank-lines", change(("data.train", "{ws}/blank.txt"), ("data.validation_split", DROP)), ("train data",)),
    # --- key=value overrides
    ("override-without-equals", change(args=("training.seed",)), ("bad override", "training.seed")),
    ("override-bad-yaml", change(args=("training.learning_rate=[1",)), ("bad override", "not valid YAML")),
    ("override-unknown-field", change(args=("data.max_lenght=8",)), ("data.max_lenght", "did you mean")),
    ("override-into-a-value", change(args=("task.name=clm",)), ("bad override", "`task` is not a section")),
    ("override-wrong-type", change(args=("training.max_steps=many",)), ("training.max_steps", "many")),
    ("override-bad-key", change(args=("training..seed=1",)), ("bad override",)),
    # --- TrainingArguments fields beyond the typed ones
    (
        "trainer-field-unknown",
        change(("training.evaluation_strategy", "steps")),
        ("training.evaluation_strategy", "did you mean `eval_strategy`"),
    ),
    (
        "trainer-field-bad-choice",
        change(("training.lr_scheduler_type", "cosinus")),
        ("training.lr_scheduler_type", "cosinus", "did you mean `cosine`"),
    ),
    ("trainer-field-wrong-type", change(("training.save_steps", "often")), ("training.save_steps", "often")),
    ("trainer-report-to-unknown", change(("training.report_to", "wandbb")), ("training.report_to", "did you mean")),
    (
        "trainer-fields-conflict",
        change(("training.load_best_model_at_end", True), ("training.save_strategy", "epoch")),
        ("`training.load_best_model_at_end`", "Evaluation strategy: steps", "Save strategy: epoch"),
    ),
    # --- the output folder
    ("output-is-a-file", change(("training.output_dir", "{ws}/a-file")), ("training.output_dir", "not a folder")),
    ("output-under-a-file", change(("training.output_dir", "{ws}/a-file/run")), ("training.output_dir", "a-file")),
    # --- resume, eval, predict, check, recipes
    ("resume-without-checkpoint", change(args=("--resume", "latest")), ("--resume", "no complete checkpoint")),
    ("resume-not-a-checkpoint", change(args=("--resume", "{ws}")), ("--resume", "not a checkpoint folder")),
    (
        "resume-and-overwrite",
        change(args=("--resume", "latest", "--overwrite")),
        ("--resume", "--overwrite", "pick one"),
    ),
    ("predict-empty-text", command("predict", "{ws}", "--text", ""), ("--text is empty",)),
    ("eval-checkpoint-not-a-run", change(args=("--checkpoint", "{ws}"), command="eval"), ("--checkpoint", "not a run")),
    (
        "eval-without-eval-data",
        change(("data.validation_split", DROP), args=("--checkpoint", "{ws}/config-only-run"), command="eval"),
        ("no eval data", "data.eval", "data.validation_split"),
    ),
    ("eval-before-training", change(command="eval"), ("training.output_dir", "no trained model", "--checkpoint")),
    ("check-bad-recipe", change(("data.columns", {"text": "body"}), command="check"), ("`body`", "columns are: text")),
    (
        "predict-text-and-file",
        command("predict", "{ws}", "--text", "hi", "--file", "{ws}/train.txt"),
        ("--text", "--file"),
    ),
    ("predict-no-input", command("predict", "{ws}"), ("--text", "--file")),
    ("predict-file-missing", command("predict", "{ws}", "--file", "{ws}/nowhere.jsonl"), ("--file", "nowhere.jsonl")),
    ("predict-not-a-run", command("predict", "{ws}", "--text", "hi"), ("not a run folder",)),
    ("recipes-unknown-name", command("recipes", "no-such-recipe"), ("no-such-recipe",)),
    # --- task-specific data and architecture checks (classification, QA, summarization)
    ("labels-missing", task_case("classification", BERT, "{ws}/text-only.csv"), ("`label`", "columns are: text")),
    ("labels-empty", task_case("classification", BERT, "{ws}/labels-none.jsonl"), ("`label`", "empty", "row")),
    ("labels-mixed-types", task_case("classification", BERT, "{ws}/labels-mixed.jsonl"), ("`label`", "int and str")),
    (
        "labels-single-value",
        task_case("classification", BERT, "{ws}/labels-single.jsonl"),
        ("`label`", "single label", "'pos'"),
    ),
    (
        "labels-unseen-in-training",
        task_case(
            "classification",
            BERT,
            "{ws}/labels.jsonl",
            ("data.validation_split", DROP),
            ("data.eval", "{ws}/labels-other.jsonl"),
        ),
        ("`label`", "eval label(s) 2, 3", "never appear", "train labels: 0, 1"),
    ),
    (
        "labels-mixed-across-splits",
        task_case(
            "classification",
            BERT,
            "{ws}/labels.jsonl",
            ("data.validation_split", DROP),
            ("data.eval", "{ws}/labels-str.jsonl"),
        ),
        ("`label`", "int and str"),
    ),
    (
        "squad-answer-start-mismatch",
        task_case("qa", BERT, "{ws}/squad-bad-start.jsonl", ("qa.doc_stride", 8)),
        ("`answers`", "answer_start 2", "id q3", "'Bob'"),
    ),
    (
        "extractive-qa-on-gpt2",
        task_case("qa", GPT2, "{ws}/squad-bad-start.jsonl", ("qa.mode", "extractive")),
        ("qa.mode", "extractive", "gpt2"),
    ),
    (
        "generative-qa-on-bert",
        task_case("qa", BERT, "{ws}/squad-bad-start.jsonl", ("qa.mode", "generative")),
        ("qa.mode", "generative", "bert"),
    ),
    (
        "packing-for-a-task-that-cannot-unpack",
        task_case("qa", BERT, "{ws}/squad-bad-start.jsonl", ("data.packing", True)),
        ("data.packing", "task `qa` takes false", "got true"),
    ),
    (
        "documents-packing-for-classification",
        task_case("classification", BERT, "{ws}/labels.jsonl", ("data.packing", "documents")),
        ("data.packing", "true or false", "`documents`"),
    ),
    (
        "section-of-another-task",
        task_case("classification", BERT, "{ws}/labels.jsonl", ("qa", {"doc_stride": 8})),
        ("section `qa:` holds options of task `qa`", "`classification`"),
    ),
    ("summarization-on-bert", task_case("summarization", BERT, "{ws}/train.txt"), ("summarization", "bert")),
    (
        "summarization-columns-missing",
        task_case(
            "summarization",
            GPT2,
            "{ws}/labels.jsonl",
            ("summarization.max_target_length", 8),
            ("generation", {"max_new_tokens": 8}),
        ),
        ("`document`", "columns are: text, label"),
    ),
]


@pytest.mark.parametrize(("build", "needles"), [pytest.param(b, n, id=name) for name, b, n in CASES])
def test_bad_input_exits_2_with_one_line_before_any_model(ws: Path, tmp_path: Path, build: Build, needles) -> None:
    argv = build(ws, tmp_path)
    before = snapshot(ws)
    assert_user_error(invoke(*argv), *needles)
    assert not (tmp_path / "out").exists(), "an output folder was left behind"
    assert snapshot(ws) == before, "an input file or folder was changed"


def test_non_empty_output_folder_is_refused_and_left_untouched(ws: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "model.safetensors").write_bytes(b"an earlier run's weights")
    (output / "checkpoint-5").mkdir()
    (output / "checkpoint-5" / "trainer_state.json").write_text("{}")
    before = snapshot(output)
    recipe = write_recipe(tmp_path / "recipe.yaml", clm_recipe(ws / "train.txt", output))
    assert_user_error(invoke("pretrain", recipe), "not empty", "--overwrite")
    assert snapshot(output) == before


def test_overwrite_with_a_bad_recipe_keeps_the_previous_run(ws: Path, tmp_path: Path) -> None:
    """--overwrite empties the folder only once everything has validated."""
    output = tmp_path / "out"
    output.mkdir()
    (output / ".llmkit").write_text('{"written_by": "llmkit", "kind": "run"}\n')  # an earlier llmkit run
    (output / "model.safetensors").write_bytes(b"an earlier run's weights")
    before = snapshot(output)
    content = clm_recipe(ws / "sentences.csv", output)
    recipe = write_recipe(tmp_path / "recipe.yaml", content)
    assert_user_error(invoke("pretrain", recipe, "--overwrite"), "columns are: sentence, label")
    assert snapshot(output) == before


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_output_folder_not_writable(ws: Path, tmp_path: Path) -> None:
    """A read-only parent folder. Root ignores permission bits, so there the folder is made immutable another
    way: a path whose parent is a regular file (covered by `output-under-a-file`); here, the permission case."""
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; see the output-under-a-file case")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        recipe = write_recipe(tmp_path / "recipe.yaml", clm_recipe(ws / "train.txt", locked / "run"))
        assert_user_error(invoke("pretrain", recipe), "training.output_dir", "not writable")
        assert not (locked / "run").exists()
    finally:
        locked.chmod(0o755)


# ----------------------------------------------------------------------------- real processes


@pytest.mark.integration
def test_a_real_process_prints_one_line_and_no_traceback(ws: Path, tmp_path: Path) -> None:
    """What a terminal sees for a data error found by the probe: exactly one stderr line."""
    content = clm_recipe(ws / "sentences.csv", tmp_path / "out")
    recipe = write_recipe(tmp_path / "recipe.yaml", content)
    done = run_llmkit("pretrain", recipe)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: data column `text` (role `text`) not found in the train data; columns are: sentence, label "
        "— set `data.columns.text`"
    ]
    assert "Traceback" not in done.stdout
    assert not (tmp_path / "out").exists()


def test_llmkit_debug_shows_the_traceback(ws: Path, tmp_path: Path) -> None:
    """With LLMKIT_DEBUG=1 the error propagates (Python prints its traceback) instead of becoming one line."""
    from llmkit.errors import LlmkitError

    recipe = write_recipe(tmp_path / "recipe.yaml", clm_recipe(ws / "latin1.txt", tmp_path / "out"))
    assert_user_error(invoke("pretrain", recipe), "not UTF-8")
    loud = invoke("pretrain", recipe, env={"LLMKIT_DEBUG": "1"})
    assert isinstance(loud.exception, LlmkitError) and "not UTF-8" in str(loud.exception)
    assert loud.exc_info is not None and loud.exc_info[2] is not None  # the traceback a terminal would show


@contextmanager
def as_nobody() -> Iterator[None]:
    """Root reads files whatever their mode; drop to `nobody` (effective uid only) to make chmod 000 bite."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_unreadable_data_file() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        root.chmod(0o777)  # `nobody` may enter it and create the output folder: only the data is locked
        data = write_corpus(root / "locked.txt")
        data.chmod(0o000)
        recipe = write_recipe(root / "recipe.yaml", clm_recipe(data, root / "out"))
        recipe.chmod(0o644)
        with as_nobody():
            result = invoke("pretrain", recipe)
        assert_user_error(result, "data.train", "locked.txt", "cannot read", "ermission denied")
        assert not (root / "out").exists()
