"""Translation: the tiny T5 and GPT-2 CI recipes train through the CLI and clear their BLEU gates, the scores are
sacreBLEU's own, the HF `{"translation": {...}}` layout with source/target languages, T5's task prefix, one-line
errors for a missing language or an empty source, `predict`, and LoRA + merge keeping the translations."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from llmkit.recipe import load_recipe, meets
from tests.conftest import REPO
from tests.tiny_recipe import invoke, one_thread, write_recipe

TRAIN = REPO / "recipes/ci/data/translation-train.jsonl"
EVAL = REPO / "recipes/ci/data/translation-eval.jsonl"
T5_RECIPE = REPO / "recipes/ci/tiny-t5-translation.yaml"
GPT2_RECIPE = REPO / "recipes/ci/tiny-gpt2-translation.yaml"


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def hf_layout(folder: Path, source: str = "en", target: str = "ro", blank_row: int | None = None) -> list[str]:
    """The CI data rewritten as `{"translation": {source: ..., target: ...}}` rows; data overrides for it."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, path in (("train", TRAIN), ("eval", EVAL)):
        rows = records(path)
        lines = [
            json.dumps({"translation": {source: "" if i == blank_row else row["source"], target: row["target"]}})
            for i, row in enumerate(rows)
        ]
        paths.append(folder / f"{name}.jsonl")
        paths[-1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [f"data.train={paths[0]}", f"data.eval={paths[1]}"]


def gates_met(run: Path, recipe_path: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())
    expect = load_recipe(recipe_path).expect
    assert expect, "a CI recipe needs expect: gates"
    for name, bar in expect.items():
        assert meets(metrics[name], bar), (name, metrics[name], bar)
    return metrics


# --------------------------------------------------------------------------- T5, end to end through the CLI


@pytest.fixture
def t5_run(ci_run: Callable[[str], Path]) -> Path:
    """The shipped T5 recipe trained through the CLI (once per session, shared with the recipe contract)."""
    with one_thread():
        return ci_run("tiny-t5-translation")


def test_t5_translator_meets_its_bleu_gates(t5_run: Path) -> None:
    metrics = gates_met(t5_run, T5_RECIPE)
    assert 0 <= metrics["eval_bleu"] <= 100 and 0 <= metrics["eval_chrf"] <= 100
    assert 4 <= metrics["eval_gen_len"] <= 16, metrics  # Pseudo sentences are 5 to 10 words
    assert json.loads((t5_run / "config.json").read_text())["model_type"] == "t5"


def test_scores_are_sacrebleu_on_the_predictions_file(t5_run: Path) -> None:
    import sacrebleu

    rows = records(t5_run / "predictions.jsonl")
    assert [row["source"] for row in rows] == [row["source"] for row in records(EVAL)]
    assert [row["reference"] for row in rows] == [row["target"] for row in records(EVAL)]
    predictions, references = [row["target"] for row in rows], [[row["reference"] for row in rows]]
    metrics = json.loads((t5_run / "metrics.json").read_text())
    assert abs(sacrebleu.corpus_bleu(predictions, references).score - metrics["eval_bleu"]) < 1e-6
    assert abs(sacrebleu.corpus_chrf(predictions, references).score - metrics["eval_chrf"]) < 1e-6


def test_predict_translates_text_and_translation_rows(t5_run: Path, tmp_path: Path) -> None:
    result = invoke("predict", t5_run, "--text", "the big dog sees a small cat today.")
    assert result.exit_code == 0, result.output
    (record,) = json_lines(result.stdout)
    assert record["source"] == "the big dog sees a small cat today." and record["target"]
    assert "tavo" in record["target"].split()  # dog → tavo: the model translates rather than copies

    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"translation": {"en": "a cat feeds the bird.", "Pseudo": "na miru ka pelu nutras."}})
        + "\n"
        + json.dumps({"source": "the old farmer likes a boat."})
        + "\n"
    )
    result = invoke("predict", t5_run, "--file", rows)
    assert result.exit_code == 0, result.output
    first, second = json_lines(result.stdout)
    assert first["source"] == "a cat feeds the bird." and first["reference"] == "na miru ka pelu nutras."
    assert first["target"] and second["target"] and "reference" not in second


# --------------------------------------------------------------------------- GPT-2 (prompt-masked decoder)


def test_gpt2_translator_trains_and_meets_its_gates(ci_run: Callable[[str], Path]) -> None:
    with one_thread():
        out = ci_run("tiny-gpt2-translation")
    gates_met(out, GPT2_RECIPE)
    first = records(out / "predictions.jsonl")[0]
    assert set(first) == {"source", "target", "reference"}


def test_decoder_learns_only_the_target_after_the_separator() -> None:
    from datasets import Dataset, DatasetDict

    from llmkit.models import load_config, train_tokenizer
    from llmkit.tasks import TASKS

    recipe = load_recipe(GPT2_RECIPE)
    tokenizer = train_tokenizer(recipe.tokenizer.train, (row["source"] for row in records(TRAIN)))
    task = TASKS["translation"].specialize(load_config(recipe.model), recipe)
    rows = {"source": ["a cat feeds the bird."], "target": ["na miru ka pelu nutras."]}
    feature = task.preprocess(recipe, DatasetDict({"train": Dataset.from_dict(rows)}), tokenizer).train[0]
    start = next(i for i, label in enumerate(feature["labels"]) if label != -100)
    assert tokenizer.decode(feature["input_ids"][:start]) == "a cat feeds the bird.\nTranslation:"
    assert tokenizer.decode(feature["labels"][start:-1]) == " na miru ka pelu nutras."
    assert feature["labels"][-1] == tokenizer.eos_token_id


# --------------------------------------------------------------------------- the HF layout, prefixes, errors


def test_hf_translation_layout_with_languages_and_the_t5_prefix(tmp_path: Path) -> None:
    data = hf_layout(tmp_path / "hf")
    result = invoke("check", T5_RECIPE, *data, "translation.target_lang=ro", f"training.output_dir={tmp_path / 'r'}")
    assert result.exit_code == 0, result.output
    examples = [line for line in result.output.splitlines() if line.strip().startswith("0: ")]
    assert examples and "translate English to Romanian: " in examples[0], result.output
    assert "[[" in examples[0] and "source+target" in result.output  # both texts read from the dicts


def test_hub_style_translation_column_becomes_source_and_target() -> None:
    """A hub dataset keeps its `translation` column until the data is prepared (no local file reader)."""
    from datasets import Dataset, DatasetDict

    from llmkit.models import load_config, train_tokenizer
    from llmkit.tasks import TASKS

    recipe = load_recipe(T5_RECIPE, ["translation.source_lang=en_XX", "translation.target_lang=ro_RO"])
    task = TASKS["translation"].specialize(load_config(recipe.model), recipe)
    assert task.task_prefix == "translate English to Romanian: "
    tokenizer = train_tokenizer(recipe.tokenizer.train, (row["source"] for row in records(TRAIN)))
    rows = [{"translation": {"en": "a cat feeds the bird.", "ro": "na miru ka pelu nutras."}}]
    prepared = task.preprocess(recipe, DatasetDict({"eval": Dataset.from_list(rows)}), tokenizer)
    assert prepared.eval_examples["source"] == ["a cat feeds the bird."]
    assert tokenizer.decode(prepared.eval[0]["input_ids"]) == "translate English to Romanian: a cat feeds the bird."
    missing = Dataset.from_list([{"translation": {"en": "a cat.", "fr": "un chat."}}])
    with pytest.raises(Exception, match=r"`translation.target_lang`: language `ro_RO` .* eval row 0 .*en, fr"):
        task.preprocess(recipe, DatasetDict({"eval": missing}), tokenizer)


def test_prefix_rules() -> None:
    from llmkit.models import load_config
    from llmkit.tasks import TASKS

    def prefix(*overrides: str) -> str:
        recipe = load_recipe(T5_RECIPE, list(overrides))
        return TASKS["translation"].specialize(load_config(recipe.model), recipe).task_prefix

    assert prefix("translation.target_lang=de") == "translate English to German: "
    assert prefix("translation.source_prefix='en2ro: '") == "en2ro: "
    assert prefix("translation.source_lang=null") == ""  # no languages: no pattern to fill
    gpt2 = load_recipe(GPT2_RECIPE, ["translation.source_lang=en", "translation.target_lang=ro"])
    assert TASKS["translation"].specialize(load_config(gpt2.model), gpt2).task_prefix == ""  # T5 only


def test_a_missing_language_is_one_line_naming_field_language_split_and_row(tmp_path: Path) -> None:
    data = hf_layout(tmp_path / "hf")
    result = invoke("check", T5_RECIPE, *data, "translation.target_lang=de", f"training.output_dir={tmp_path / 'r'}")
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "translation.target_lang" in line and "`de`" in line and "train row 0" in line and "en, ro" in line


def test_an_empty_source_is_one_line(tmp_path: Path) -> None:
    data = hf_layout(tmp_path / "hf", blank_row=3)
    result = invoke("check", T5_RECIPE, *data, "translation.target_lang=ro", f"training.output_dir={tmp_path / 'r'}")
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "`source`" in line and "train row 3" in line


def test_data_without_source_or_translation_is_one_line(tmp_path: Path) -> None:
    train = tmp_path / "pairs.jsonl"
    train.write_text("".join(json.dumps({"en": row["source"], "xx": row["target"]}) + "\n" for row in records(TRAIN)))
    result = invoke("check", T5_RECIPE, f"data.train={train}", f"data.eval={train}", f"training.output_dir={tmp_path}")
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "`source`" in line and "data.columns.source" in line


@pytest.mark.slow
def test_the_wmt16_fixture_reads_through_check(data_dir: Path, tmp_path: Path) -> None:
    """The HF example tests' file and languages (`--source_lang en_XX --target_lang ro_RO`)."""
    sample = data_dir / "hf-example-fixtures" / "wmt16" / "sample.json"
    if not sample.is_file():
        pytest.skip(f"{sample} is absent")
    result = invoke(
        "check",
        T5_RECIPE,
        f"data.train={sample}",
        f"data.eval={sample}",
        "translation.source_lang=en_XX",
        "translation.target_lang=ro_RO",
        f"training.output_dir={tmp_path / 'r'}",
    )
    assert result.exit_code == 0, result.output
    assert "translate English to Romanian: Membership of Parliament: see Minutes" in result.output
    assert "a se vedea procesul-verbal" in result.output


# --------------------------------------------------------------------------- LoRA and merge


def test_lora_run_and_its_merge_translate_alike(t5_run: Path, tmp_path: Path) -> None:
    recipe = {
        "task": "translation",
        "model": {"name_or_path": str(t5_run)},
        "data": {"train": str(TRAIN), "eval": str(EVAL), "max_length": 48},
        "translation": {"source_lang": "en", "target_lang": "Pseudo", "max_target_length": 24},
        "training": {
            "output_dir": str(tmp_path / "lora"),
            "max_steps": 20,
            "per_device_train_batch_size": 16,
            "learning_rate": 5.0e-3,
            "save_strategy": "no",
            "seed": 3,
        },
        "generation": {"max_new_tokens": 24, "batch_size": 64},
        "peft": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "auto"},
    }
    path = write_recipe(tmp_path / "lora.yaml", recipe)
    with one_thread():
        result = invoke("finetune", path)
    assert result.exit_code == 0, result.output
    lora = tmp_path / "lora"
    assert (lora / "adapter_model.safetensors").is_file() and not (lora / "model.safetensors").exists()
    from safetensors.torch import load_file

    lora_b = [w for name, w in load_file(lora / "adapter_model.safetensors").items() if "lora_B" in name]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b), "LoRA never trained: the merge check would be empty"
    result = invoke("merge", lora, tmp_path / "merged")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    texts = [row["source"] for row in records(EVAL)[:8]]
    arguments = [arg for text in texts for arg in ("--text", text)]
    adapted, merged = invoke("predict", lora, *arguments), invoke("predict", tmp_path / "merged", *arguments)
    assert adapted.exit_code == 0 and merged.exit_code == 0, adapted.output + merged.output
    translations = [row["target"] for row in json_lines(adapted.stdout)]
    assert len(translations) == 8 and all(translations)
    assert translations == [row["target"] for row in json_lines(merged.stdout)]


def test_a_task_prefix_that_leaves_no_room_for_the_text_is_refused() -> None:
    result = invoke("check", T5_RECIPE, "data.max_length=24")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "data.max_length" in result.output and "translate English to Pseudo: " in result.output
