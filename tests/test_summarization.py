"""Summarization: the masked prompt → target mechanism, decoder-only (GPT-2) and encoder-decoder (T5) runs end to
end, ROUGE gates, predictions.jsonl, `predict`, and the refusal of encoder-only models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from llmkit.errors import LlmkitError
from llmkit.recipe import load_recipe, recipe_from_mapping
from tests.conftest import REPO
from tests.tiny_recipe import invoke

COUNCIL_TRAIN = REPO / "recipes/ci/data/council-train.jsonl"
COUNCIL_EVAL = REPO / "recipes/ci/data/council-eval.jsonl"
DATA = [f"data.train={COUNCIL_TRAIN}", f"data.eval={COUNCIL_EVAL}"]


@pytest.fixture(scope="module")
def tokenizer():
    from llmkit.models import train_tokenizer
    from llmkit.recipe import TokenizerTrainSection

    texts = [json.loads(line)["document"] for line in COUNCIL_TRAIN.read_text().splitlines()]
    return train_tokenizer(TokenizerTrainSection(kind="bpe", vocab_size=400, min_frequency=1), texts)


def gpt2_recipe(**options: object):
    return recipe_from_mapping(
        {
            "task": "summarization",
            "model": {
                "from_config": {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 64}
            },
            "tokenizer": {"train": {"kind": "bpe", "vocab_size": 400}},
            "data": {"train": str(COUNCIL_TRAIN), "max_length": 64},
            "summarization": {"max_target_length": 12, **options},
            "training": {"output_dir": "unused"},
            "generation": {"max_new_tokens": 12},
        }
    )


def summarizer(recipe):
    from llmkit.models import load_config
    from llmkit.tasks import TASKS

    return TASKS["summarization"].specialize(load_config(recipe.model), recipe)


def test_prompt_tokens_are_masked_and_target_plus_eos_learned(tokenizer) -> None:
    from datasets import Dataset, DatasetDict

    recipe = gpt2_recipe()
    task = summarizer(recipe)
    rows = {"document": ["The Avonford council met on Monday."], "summary": ["Avonford council voted."]}
    feature = task.preprocess(recipe, DatasetDict({"train": Dataset.from_dict(rows)}), tokenizer).train[0]
    labels, ids = feature["labels"], feature["input_ids"]
    prompt_length = labels.index(next(label for label in labels if label != -100))
    assert all(label == -100 for label in labels[:prompt_length])
    assert labels[prompt_length:] == ids[prompt_length:]  # every target token, and nothing after it
    assert ids[-1] == tokenizer.eos_token_id  # the model learns to stop
    assert tokenizer.decode(ids[:prompt_length]) == "The Avonford council met on Monday.\nTL;DR:"
    assert tokenizer.decode(ids[prompt_length:-1]) == " Avonford council voted."


def test_long_document_is_cut_but_never_the_target_or_separator(tokenizer) -> None:
    from datasets import Dataset, DatasetDict

    recipe = gpt2_recipe()
    task = summarizer(recipe)
    document = " ".join(["Residents spoke for hours."] * 40)
    summary = "Avonford council voted."
    rows = {"document": [document], "summary": [summary]}
    feature = task.preprocess(recipe, DatasetDict({"train": Dataset.from_dict(rows)}), tokenizer).train[0]
    assert len(feature["input_ids"]) <= recipe.data.max_length
    learned = [label for label in feature["labels"] if label != -100]
    assert tokenizer.decode(learned[:-1]) == " " + summary and learned[-1] == tokenizer.eos_token_id
    prompt = tokenizer.decode(feature["input_ids"][: len(feature["input_ids"]) - len(learned)])
    assert prompt.endswith("\nTL;DR:") and prompt.startswith("Residents spoke") and len(prompt) < len(document)


def test_generation_sees_exactly_the_training_prompt(tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    from datasets import Dataset, DatasetDict

    import llmkit.tasks.mechanisms.generation as generation

    recipe = gpt2_recipe()
    task = summarizer(recipe)
    rows = {"document": [" ".join(["The council met."] * 30), "Short one."], "summary": ["A.", "B."]}
    features = task.preprocess(recipe, DatasetDict({"train": Dataset.from_dict(rows)}), tokenizer).train
    seen: list[list[int]] = []
    monkeypatch.setattr(
        generation, "generate", lambda model, tok, prompts, settings: seen.extend(prompts) or [""] * len(prompts)
    )
    task.predict(None, tokenizer, [{"text": text} for text in rows["document"]], recipe)
    for feature, prompt in zip(features, seen, strict=True):
        cut = feature["labels"].index(next(label for label in feature["labels"] if label != -100))
        assert feature["input_ids"][:cut] == prompt


def test_target_longer_than_the_budget_is_refused() -> None:
    from llmkit.models import load_config

    recipe = gpt2_recipe(max_target_length=60)
    with pytest.raises(LlmkitError, match=r"`summarization.max_target_length`"):
        summarizer(recipe).check_architecture(load_config(recipe.model), recipe)


def test_encoder_only_model_is_refused_before_loading(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(
        "finetune",
        "ci/tiny-gpt2-summarization",
        f"training.output_dir={out}",
        *DATA,
        "model.from_config={model_type: bert, num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2}",
    )
    assert result.exit_code == 2, result.output
    assert "encoder-only" in result.output and "T5" in result.output
    assert not out.exists()


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def gpt2_run(ci_run: Callable[[str], Path]) -> Path:
    """The shipped recipe's run (its bars and `eval --check` are test_recipes_contract.py's)."""
    return ci_run("tiny-gpt2-summarization")


def test_eval_computes_only_the_loss_then_generates(tmp_path: Path) -> None:
    """Evaluation never collects logits (a vocabulary-wide tensor per token); the texts come from generate."""
    import transformers

    out = tmp_path / "run"
    loss_only: list[bool] = []
    original = transformers.Trainer.prediction_step

    def spy(self, model, inputs, prediction_loss_only, ignore_keys=None):  # type: ignore[no-untyped-def]
        loss_only.append(prediction_loss_only)
        return original(self, model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    transformers.Trainer.prediction_step = spy
    short = ["training.max_steps=2", "data.max_eval_samples=4", "generation.max_new_tokens=4"]
    try:
        result = invoke("finetune", "ci/tiny-gpt2-summarization", f"training.output_dir={out}", *DATA, *short)
    finally:
        transformers.Trainer.prediction_step = original
    assert result.exit_code == 0, result.output
    assert loss_only and all(loss_only), "eval must not collect logits"
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(0 <= metrics[f"eval_{k}"] <= 100 for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"))


def test_predictions_file_holds_one_summary_per_document(gpt2_run: Path) -> None:
    from llmkit.tasks.mechanisms.scores import rouge

    records = [json.loads(line) for line in (gpt2_run / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == len(COUNCIL_EVAL.read_text().splitlines())
    assert all(record["summary"] for record in records)
    metrics = json.loads((gpt2_run / "metrics.json").read_text())
    again = rouge([r["summary"] for r in records], [r["reference"] for r in records])
    assert again["rouge1"] == pytest.approx(metrics["eval_rouge1"])  # the file is what was scored


def test_predict_writes_a_summary(gpt2_run: Path) -> None:
    document = (
        "The Glenrock council met on Monday. It rained all evening. "
        "In the end the council voted to ban cars downtown. The meeting started late."
    )
    result = invoke("predict", gpt2_run, "--text", document)
    assert result.exit_code == 0, result.output
    record = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert "council voted to" in record["summary"]


def test_t5_summarizer_through_seq2seq_trainer(ci_run: Callable[[str], Path]) -> None:
    recipe = load_recipe(REPO / "recipes/ci/tiny-t5-summarization.yaml")
    assert summarizer(recipe).trainer_class().__name__ == "Seq2SeqTrainer"
    run = ci_run("tiny-t5-summarization")  # its rouge bar: test_recipes_contract.py
    assert json.loads((run / "config.json").read_text())["model_type"] == "t5"
