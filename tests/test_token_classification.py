"""Token classification end to end (tiny BERT and tiny GPT-2 from config, through the CLI): CoNLL and JSON
data, sub-token alignment, seqeval scores as run_ner computes them, predict with entity offsets, data errors,
LoRA and merge."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmkit.errors import LlmkitError
from llmkit.recipe import recipe_from_mapping
from llmkit.tasks.mechanisms.tagging import aligned_labels, b_to_i_ids, read_conll
from tests.conftest import REPO
from tests.tiny_recipe import invoke, one_thread, tiny_bert, write_recipe

BERT_RECIPE = "ci/tiny-bert-token-classification"
TAGS_TRAIN = REPO / "recipes/ci/data/tags-train.txt"
TAGS_EVAL = REPO / "recipes/ci/data/tags-eval.txt"


@pytest.fixture
def bert_run(ci_run: Callable[[str], Path]) -> Path:
    return ci_run("tiny-bert-token-classification")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def printed_records(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


# --------------------------------------------------------------------------- training, scores, label maps


def test_bert_tagger_meets_its_gates_and_saves_the_tag_names(bert_run: Path) -> None:
    metrics = json.loads((bert_run / "metrics.json").read_text())
    assert metrics["eval_f1"] >= 0.9 and metrics["eval_accuracy"] >= 0.97, metrics
    assert all(0 <= metrics[f"eval_{name}"] <= 1 for name in ("precision", "recall", "f1", "accuracy"))
    assert metrics["eval_loss"] < 0.5
    config = json.loads((bert_run / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"]
    assert config["label2id"]["O"] == 6 and config["architectures"] == ["BertForTokenClassification"]


def test_scores_are_seqeval_over_the_predicted_words(bert_run: Path) -> None:
    """The metrics recomputed with seqeval from predictions.jsonl (one tag per word, gold as `reference`)."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    records = read_jsonl(bert_run / "predictions.jsonl")
    gold = read_conll(TAGS_EVAL)
    assert gold is not None and len(records) == len(gold) == 100
    for record, row in zip(records, gold, strict=True):
        assert record["tokens"] == row["tokens"] and record["reference"] == row["tags"]
        assert len(record["tags"]) == len(record["tokens"]) and None not in record["tags"]
    references = [record["reference"] for record in records]
    predictions = [record["tags"] for record in records]
    metrics = json.loads((bert_run / "metrics.json").read_text())
    assert metrics["eval_precision"] == pytest.approx(precision_score(references, predictions), abs=1e-9)
    assert metrics["eval_recall"] == pytest.approx(recall_score(references, predictions), abs=1e-9)
    assert metrics["eval_f1"] == pytest.approx(f1_score(references, predictions), abs=1e-9)
    assert metrics["eval_accuracy"] == pytest.approx(accuracy_score(references, predictions), abs=1e-9)
    assert any(ref != pred for ref, pred in zip(references, predictions, strict=True)) or metrics["eval_f1"] == 1.0


def test_eval_check_on_json_lines_keeps_the_checkpoint_tags(bert_run: Path, tmp_path: Path) -> None:
    """The eval sentences as JSON lines in the HF fixture's layout (`words`, `ner`): the same scores."""
    rows = [{"words": row["tokens"], "ner": row["tags"]} for row in read_conll(TAGS_EVAL) or []]
    eval_file = write_jsonl(tmp_path / "eval.jsonl", rows)
    with one_thread():
        result = invoke(
            "eval",
            BERT_RECIPE,
            "--check",
            "--checkpoint",
            bert_run,
            f"data.eval={eval_file}",
            "data.columns.tokens=words",
            "data.columns.tags=ner",
        )
    assert result.exit_code == 0, result.output
    assert "expectations met" in result.output
    written = json.loads((bert_run / "eval" / "eval" / "metrics.json").read_text())
    trained = json.loads((bert_run / "metrics.json").read_text())
    assert written["eval_f1"] == pytest.approx(trained["eval_f1"]) and written["eval_loss"] == pytest.approx(
        trained["eval_loss"], rel=1e-4
    )


def test_gpt2_tagger_trains_with_a_space_before_each_word(ci_run: Callable[[str], Path]) -> None:
    out = ci_run("tiny-gpt2-token-classification")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_f1"] >= 0.75 and metrics["eval_accuracy"] >= 0.93, metrics
    pre_tokenizer = json.loads((out / "tokenizer.json").read_text())["pre_tokenizer"]
    assert pre_tokenizer["type"] == "ByteLevel" and pre_tokenizer["add_prefix_space"] is True
    result = invoke("predict", out, "--text", "Maria Rossi works for Toyota in Madrid .")
    assert result.exit_code == 0, result.output
    (record,) = printed_records(result.stdout)
    assert len(record["tags"]) == len(record["tokens"]) == 8


# --------------------------------------------------------------------------- predict


def test_predict_text_gives_entities_with_character_offsets(bert_run: Path) -> None:
    text = "Anna Schmidt works for Siemens in Berlin."
    result = invoke("predict", bert_run, "--text", text)
    assert result.exit_code == 0, result.output
    (record,) = printed_records(result.stdout)
    assert record["tokens"] == ["Anna", "Schmidt", "works", "for", "Siemens", "in", "Berlin", "."]
    assert record["tags"] == ["B-PER", "I-PER", "O", "O", "B-ORG", "O", "B-LOC", "O"]
    assert record["entities"] == [
        {"text": "Anna Schmidt", "label": "PER", "start": 0, "end": 12},
        {"text": "Siemens", "label": "ORG", "start": 23, "end": 30},
        {"text": "Berlin", "label": "LOC", "start": 34, "end": 40},
    ]


def test_predict_tokens_offsets_are_in_the_words_joined_by_spaces(bert_run: Path, tmp_path: Path) -> None:
    words = ["Police", "in", "New", "York", "arrested", "Li", "Wei", "."]
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"tokens": words, "tags": ["O"] * 8}])
    result = invoke("predict", bert_run, "--file", inputs)
    assert result.exit_code == 0, result.output
    (record,) = printed_records(result.stdout)
    joined = " ".join(words)
    assert record["reference"] == ["O"] * 8  # the given tags are kept beside the prediction
    assert record["entities"] == [
        {"text": "New York", "label": "LOC", "start": 10, "end": 18},
        {"text": "Li Wei", "label": "PER", "start": 28, "end": 34},
    ]
    assert all(joined[entity["start"] : entity["end"]] == entity["text"] for entity in record["entities"])


# --------------------------------------------------------------------------- reading CoNLL columns


def test_conll_text_in_the_germeval_layout(tmp_path: Path) -> None:
    """`token label` lines (space or tab), a blank line between sentences, `-DOCSTART-` skipped, label last."""
    path = tmp_path / "train.txt"
    path.write_text(
        '-DOCSTART- O\n\nSchartau B-PER\nsagte O\ndem O\n" O\nTagesspiegel\tB-ORG\n\n\nFirmengründer O\nWolf B-PER\n'
        "Peter I-PER\n",
        encoding="utf-8",
    )
    assert read_conll(path) == [
        {
            "tokens": ["Schartau", "sagte", "dem", '"', "Tagesspiegel"],
            "tags": ["B-PER", "O", "O", "O", "B-ORG"],
        },
        {
            "tokens": ["Firmengründer", "Wolf", "Peter"],
            "tags": ["O", "B-PER", "I-PER"],
        },
    ]
    four = tmp_path / "conll2003.txt"
    four.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n", encoding="utf-8")
    assert read_conll(four) == [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}]
    untagged = tmp_path / "untagged.txt"  # a word without its tag, among good lines
    untagged.write_text("Anna B-PER\nflew\nto O\n\n", encoding="utf-8")
    with pytest.raises(LlmkitError, match=r"untagged.txt: line 2 has 1 field\(s\) \('flew'\); the file's lines have 2"):
        read_conll(untagged)
    prose = tmp_path / "prose.txt"
    prose.write_text("The\ncat sat\nIt\n", encoding="utf-8")
    with pytest.raises(LlmkitError, match="expected CoNLL columns"):
        read_conll(prose)
    assert read_conll(tmp_path / "rows.jsonl") is None


@pytest.mark.slow
def test_reads_the_real_germeval_fixture(data_dir: Path) -> None:
    folder = data_dir / "hf-example-fixtures" / "GermEval"
    text = (folder / "train.txt").read_text(encoding="utf-8")
    rows = read_conll(folder / "train.txt")
    assert rows is not None
    assert len(rows) == len([block for block in text.split("\n\n") if block.strip()])
    assert sum(len(row["tokens"]) for row in rows) == len([line for line in text.splitlines() if line.strip()])
    labels = set((folder / "labels.txt").read_text(encoding="utf-8").split())
    assert {tag for row in rows for tag in row["tags"]} <= labels
    assert rows[0]["tokens"][0] == "Schartau" and rows[0]["tags"][0] == "B-PER"


# --------------------------------------------------------------------------- sub-token alignment


def test_first_sub_token_carries_the_label_and_label_all_tokens_continues_it(bert_run: Path) -> None:
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    from llmkit.tasks.token_classification import TokenClassification

    tokenizer = AutoTokenizer.from_pretrained(str(bert_run))
    words, tags = ["Novakovic", "visited", "Oslo"], ["B-PER", "O", "B-LOC"]
    encoded = tokenizer([words], is_split_into_words=True)
    word_ids = encoded.word_ids(0)
    assert word_ids.count(0) > 1, "the rare name is cut into several sub-tokens"
    label2id = {"B-LOC": 0, "B-ORG": 1, "B-PER": 2, "I-LOC": 3, "I-ORG": 4, "I-PER": 5, "O": 6}  # sorted names
    ids = [label2id[tag] for tag in tags]
    first_only = aligned_labels(word_ids, ids, False, b_to_i_ids(label2id))
    every = aligned_labels(word_ids, ids, True, b_to_i_ids(label2id))
    later = [-100] * (word_ids.count(0) - 1)
    assert first_only == [-100, 2, *later, 6, 0, -100]  # [CLS] and [SEP] -100 too
    assert every == [-100, 2, *[5 for _ in later], 6, 0, -100]  # B-PER, then I-PER on the later pieces

    for label_all in (False, True):
        recipe = recipe_from_mapping(
            {
                "task": "token_classification",
                "model": {"from_config": tiny_bert()},
                "tokenizer": {"name_or_path": str(bert_run)},
                "data": {"train": str(TAGS_TRAIN), "max_length": 32},
                "token_classification": {"label_all_tokens": label_all},
                "training": {"output_dir": str(bert_run.parent / "unused")},
            }
        )
        task = TokenClassification()
        every_tag = {"tokens": list("abcdefg"), "tags": sorted(label2id)}
        raw = DatasetDict({"train": Dataset.from_list([{"tokens": words, "tags": tags}, every_tag])})
        task.config_overrides(recipe, raw)
        features = task.preprocess(recipe, raw, tokenizer).train
        assert features[0]["labels"] == (every if label_all else first_only)


# --------------------------------------------------------------------------- check and data errors


def test_check_shows_tags_under_words_and_the_tag_counts() -> None:
    result = invoke("check", BERT_RECIPE)
    assert result.exit_code == 0, result.output
    assert "labels (7; words per train / eval): B-LOC" in result.output
    examples = [line for line in result.output.splitlines() if line.strip().startswith(("0:", "1:", "2:"))]
    assert len(examples) == 3, result.output
    # the first training sentence, word by word (uncased WordPiece), its entity words tagged
    assert (
        examples[0].strip() == "0: 'merkel[[B-PER]] , a lawyer from berlin[[B-LOC]] , joined toyota[[B-ORG]] in 1998 .'"
    )
    assert "[[O]]" not in result.output and "[CLS]" not in result.output


def tagged_recipe(tmp_path: Path, tokenizer: Path, train_rows: list[dict], eval_rows: list[dict] | None) -> Path:
    data: dict[str, Any] = {"train": str(write_jsonl(tmp_path / "train.jsonl", train_rows))}
    if eval_rows is not None:
        data["eval"] = str(write_jsonl(tmp_path / "eval.jsonl", eval_rows))
    return write_recipe(
        tmp_path / "recipe.yaml",
        {
            "task": "token_classification",
            "model": {"from_config": tiny_bert()},
            "tokenizer": {"name_or_path": str(tokenizer)},
            "data": {**data, "columns": {"tokens": "words", "tags": "ner"}, "max_length": 32},
            "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2},
        },
    )


GOOD = [{"words": ["Anna", "visited", "Lima"], "ner": ["B-PER", "O", "B-LOC"]}] * 3


@pytest.mark.parametrize(
    ("train_rows", "eval_rows", "message"),
    [
        (
            [*GOOD, {"words": ["a", "b", "c", "d", "e", "f"], "ner": ["O"] * 5}],
            None,
            "data column `ner` (role `tags`): train row 3 has 5 tags for 6 tokens (column `words`)",
        ),
        ([*GOOD, {"words": [], "ner": []}], None, "data column `words` (role `tokens`): train row 3 has no tokens"),
        ([{"words": ["a", "b"], "ner": "O O"}], None, "data column `ner` (role `tags`) must hold a list of labels"),
        ([{"words": ["Anna", "sang"], "ner": ["O", "O"]}], None, "the train data has a single label ('O')"),
        (GOOD, [{"words": ["Bo", "Lima"], "ner": ["B-MISC", "B-LOC"]}], "eval label(s) 'B-MISC' never appear"),
    ],
)
def test_bad_rows_are_one_line_errors(
    tmp_path: Path, bert_run: Path, train_rows: list[dict], eval_rows: list[dict] | None, message: str
) -> None:
    result = invoke("finetune", tagged_recipe(tmp_path, bert_run, train_rows, eval_rows))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "run").exists()


def test_a_tokenizer_trained_for_the_run_learns_the_words_of_json_rows(tmp_path: Path, bert_run: Path) -> None:
    from llmkit.recipe import load_recipe
    from llmkit.run import Run

    recipe = load_recipe(
        tagged_recipe(tmp_path, bert_run, GOOD, None),
        ["tokenizer.name_or_path=null", "tokenizer.train={kind: wordpiece, vocab_size: 300, min_frequency: 1}"],
    )
    tokenizer = Run.prepare(recipe).tokenizer
    words = {word.lower() for row in GOOD for word in row["words"] if word.isalpha()}
    assert words and words <= set(tokenizer.get_vocab()), sorted(words - set(tokenizer.get_vocab()))


# --------------------------------------------------------------------------- LoRA and merge


def test_lora_trains_the_head_and_merge_keeps_the_predictions(bert_run: Path, tmp_path: Path) -> None:
    adapter, merged = tmp_path / "lora", tmp_path / "merged"
    with one_thread():
        result = invoke(
            "finetune",
            BERT_RECIPE,
            f"model.name_or_path={bert_run}",
            "model.from_config=null",
            "tokenizer.train=null",
            f"training.output_dir={adapter}",
            "training.max_steps=20",
            "training.learning_rate=1e-3",
            "peft.r=8",
        )
    assert result.exit_code == 0, result.output
    assert "classifier" in json.loads((adapter / "adapter_config.json").read_text())["modules_to_save"]
    assert json.loads((adapter / "metrics.json").read_text())["eval_f1"] >= 0.9
    result = invoke("merge", adapter, merged)
    assert result.exit_code == 0, result.output
    texts = ["Anna Schmidt works for Siemens in Berlin .", "Shares of Airbus fell 3 percent in Hong Kong trading ."]
    arguments = [argument for text in texts for argument in ("--text", text)]
    before, after = invoke("predict", adapter, *arguments), invoke("predict", merged, *arguments)
    assert before.exit_code == after.exit_code == 0, before.output + after.output
    assert printed_records(before.stdout) == printed_records(after.stdout)
    assert len(printed_records(after.stdout)) == 2


def test_onnx_export_keeps_the_predictions(bert_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    with one_thread():
        result = invoke("export", bert_run, out, "--format", "onnx")
    assert result.exit_code == 0, result.output[-2000:]
    assert "argmax agreement 100.00%" in result.output
    arguments = ("--text", "Anna Schmidt works for Siemens in Berlin .", "--text", "Police in Oslo arrested Li Wei .")
    from_run, from_onnx = invoke("predict", bert_run, *arguments), invoke("predict", out, *arguments)
    assert from_run.exit_code == from_onnx.exit_code == 0, from_run.output + from_onnx.output
    assert printed_records(from_onnx.stdout) == printed_records(from_run.stdout)


# --------------------------------------------------------------------------- the real checkpoint


@pytest.fixture(scope="module")
def minilm_conll(tmp_path_factory: pytest.TempPathFactory, minilm: Path) -> tuple[Path, dict[str, float]]:
    """MiniLM fine-tuned with the arguments of HF's `test_run_ner` (warmup 2, lr 2e-4, batch 2/2, 2 epochs, seed 7)."""
    from tests.conftest import DATA_DIR

    if not (DATA_DIR / "hf-example-fixtures" / "conll" / "sample.json").is_file():
        pytest.skip(f"no CoNLL fixture under {DATA_DIR}")
    out = tmp_path_factory.mktemp("minilm-conll") / "run"
    recipe = REPO / "recipes/minilm-conll.yaml"
    result = invoke("finetune", recipe, f"model.name_or_path={minilm}", f"training.output_dir={out}")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    print({key: round(value, 4) for key, value in metrics.items() if key.startswith("eval_")})
    return out, metrics


@pytest.mark.slow
def test_minilm_on_the_conll_fixture_meets_the_run_ner_accuracy_gate(minilm_conll: tuple[Path, dict]) -> None:
    out, metrics = minilm_conll
    assert metrics["eval_accuracy"] >= 0.75, metrics
    result = invoke("eval", REPO / "recipes/minilm-conll.yaml", "--check", "--checkpoint", out)
    assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="run_ner's eval_loss < 0.5 gate is set for bert-base-uncased (110M); MiniLM-L6 (22M) ends at 0.548 "
    "after the same 10 steps (the loss is the model's own: same value with llmkit's token-mean loss)",
)
def test_minilm_on_the_conll_fixture_meets_the_run_ner_loss_gate(minilm_conll: tuple[Path, dict]) -> None:
    assert minilm_conll[1]["eval_loss"] < 0.5, minilm_conll[1]
