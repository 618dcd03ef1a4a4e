"""A finished run explains itself: model, tokenizer, resolved recipe, metrics, run facts, model card, loss curve and
TensorBoard logs; the final save is atomic; inputs are never touched; the same recipe and seed give the same
numbers; a diverging run stops with exit 1 naming the step and keeps the checkpoints before it.

One tiny run (module fixture) serves most tests; a second identical run checks determinism.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from llmkit.recipe import load_recipe
from tests.tiny_recipe import BLOCK, clm_recipe, invoke, sha256, snapshot, write_corpus, write_recipe

SEED = 11  # given as an override, so the resolved recipe.yaml must show it


def train_tiny(folder: Path, name: str, **training: Any) -> tuple[Path, Any]:
    """`llmkit pretrain` on the tiny recipe; the data path comes through an environment variable."""
    data = folder / "data"
    if not (data / "train.txt").exists():
        write_corpus(data / "train.txt")
    content = clm_recipe("${TINY_DATA}/train.txt", folder / name, **training)
    recipe = write_recipe(folder / f"{name}.yaml", content)
    result = invoke("pretrain", recipe, f"training.seed={SEED}", env={"TINY_DATA": str(data)})
    return folder / name, result


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("run-folder")
    data_file = write_corpus(folder / "data" / "train.txt")
    before = snapshot(data_file.parent)
    output, result = train_tiny(folder, "run")
    assert result.exit_code == 0, (result.stderr[-3000:], result.exception)
    return {"folder": folder, "output": output, "result": result, "data": data_file, "data_before": before}


def read(output: Path, name: str) -> Any:
    return json.loads((output / name).read_text(encoding="utf-8"))


def test_final_model_and_tokenizer_load_and_predict(run: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = run["output"]
    assert (output / "model.safetensors").is_file() and not (output / ".final.tmp").exists()
    model = AutoModelForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    encoded = tokenizer("the cat sees the ball in the morning.", return_tensors="pt")
    with torch.no_grad():
        loss = model(**encoded, labels=encoded["input_ids"]).loss.item()
    assert loss < math.log(len(tokenizer)) - 1.0, "the saved model is no better than chance"


def test_metrics_json(run: dict[str, Any]) -> None:
    metrics = read(run["output"], "metrics.json")
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-6)
    assert metrics["eval_loss"] < math.log(300) - 1.0  # untrained: about ln(vocab)
    assert metrics["train_loss"] > 0


def test_loss_falls_and_is_logged_to_tensorboard(run: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(run["output"].glob("runs/*/events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    scalars: dict[str, list[float]] = {}
    for event_file in events:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.value for e in accumulator.Scalars(tag))
    train_losses = scalars["train/loss"]
    assert len(train_losses) == 30 // 5  # one per logging step
    assert train_losses[-1] < train_losses[0] - 1.0
    assert "eval/loss" in scalars


def test_recipe_yaml_is_resolved_and_reloads(run: dict[str, Any]) -> None:
    text = (run["output"] / "recipe.yaml").read_text(encoding="utf-8")
    assert "${" not in text and "extends" not in text
    resolved = load_recipe(run["output"] / "recipe.yaml")
    assert resolved.training.seed == SEED
    assert resolved.data.train == str(run["data"])
    assert resolved.model.from_config == clm_recipe("x", "y")["model"]["from_config"]
    assert yaml.safe_load(text)["training"]["max_steps"] == 30


def test_run_json_says_how_to_reproduce_and_how_fast(run: dict[str, Any]) -> None:
    import torch
    import transformers

    import llmkit

    facts = read(run["output"], "run.json")
    assert facts["llmkit"] == llmkit.__version__
    assert facts["transformers"] == transformers.__version__ and facts["torch"] == torch.__version__
    assert facts["seed"] == SEED and facts["device"] == "cpu" and facts["global_step"] == 30
    assert facts["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", facts["git_commit"])
    train = facts["data_fingerprints"]["train"]
    assert train["sha256"] == {str(run["data"]): sha256(run["data"])}
    assert train["rows"] == 216 and facts["data_fingerprints"]["eval"]["rows"] == 24  # 240 lines, 10% held out
    assert facts["started"] <= facts["ended"] and 0 < facts["train_runtime"] < facts["wall_seconds"]
    # Packed blocks: every training example is exactly BLOCK tokens, so tokens/s = samples/s × BLOCK.
    assert facts["tokens_per_second"] == pytest.approx(facts["train_samples_per_second"] * BLOCK, rel=1e-3)
    assert facts["tokens_per_second"] > 0


def test_model_card_says_what_and_how_to_load(run: dict[str, Any]) -> None:
    output = run["output"]
    card = (output / "README.md").read_text(encoding="utf-8")
    metrics = read(output, "metrics.json")
    assert "task: clm" in card and "gpt2" in card and str(run["data"]) in card
    assert f"{metrics['eval_loss']:.4g}" in card and "perplexity" in card
    code = re.search(r"```python\n(.*?)```", card, re.DOTALL)
    assert code, card
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)  # the card's own loading snippet works
    assert type(namespace["model"]).__name__ == "GPT2LMHeadModel"
    assert namespace["tokenizer"]("the cat")["input_ids"]


def test_loss_png_is_drawn(run: dict[str, Any]) -> None:
    from llmkit.report import plot_losses

    png = (run["output"] / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (700, 400)
    assert not plot_losses([], run["folder"] / "nothing.png") and not (run["folder"] / "nothing.png").exists()


def test_inputs_untouched_and_no_cache_beside_the_data(run: dict[str, Any]) -> None:
    assert snapshot(run["data"].parent) == run["data_before"]


def test_same_recipe_and_seed_give_identical_results(run: dict[str, Any]) -> None:
    output, result = train_tiny(run["folder"], "again")
    assert result.exit_code == 0, result.stderr[-3000:]
    first, second = read(run["output"], "metrics.json"), read(output, "metrics.json")
    timing = re.compile(r"runtime|per_second")
    assert {k: v for k, v in first.items() if not timing.search(k)} == {
        k: v for k, v in second.items() if not timing.search(k)
    }
    assert sha256(run["output"] / "model.safetensors") == sha256(output / "model.safetensors")
    assert read(run["output"], "run.json")["data_fingerprints"] == read(output, "run.json")["data_fingerprints"]


def test_non_finite_loss_exits_1_naming_the_step_and_keeps_earlier_checkpoints(tmp_path: Path) -> None:
    # Plain SGD without clipping at the largest learning rate a recipe accepts blows up within a few steps;
    # logging_steps above max_steps: the loss is never logged, the check must not depend on it.
    output, result = train_tiny(
        tmp_path,
        "diverged",
        optim="sgd",
        max_grad_norm=0,
        learning_rate=1000,
        logging_steps=50,
        save_steps=1,
        max_steps=8,
        eval_strategy="no",
    )
    assert result.exit_code == 1, (result.stderr[-2000:], result.exception)
    line = result.stderr.strip().splitlines()[-1]
    match = re.search(r"not finite at step (\d+)", line)
    assert line.startswith("error: training diverged") and match, line
    step = int(match.group(1))
    kept = sorted(int(p.name.split("-")[1]) for p in output.glob("checkpoint-*"))
    assert kept and max(kept) < step, (kept, step)
    assert "Traceback" not in result.output
    assert not (output / "model.safetensors").exists() and not (output / "metrics.json").exists()


class FakeTrainer:
    """Saves like Trainer.save_model, but can die half-way through writing the weights."""

    def __init__(self, crash: bool) -> None:
        self.crash = crash
        self.accelerator = SimpleNamespace(wait_for_everyone=lambda: None)

    def save_model(self, path: str) -> None:
        folder = Path(path)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text('{"new": true}')
        (folder / "model.safetensors").write_bytes(b"new weights, first half")
        if self.crash:
            raise KeyboardInterrupt  # interrupted in the middle of the save

    def is_world_process_zero(self) -> bool:
        return True


class FakeTokenizer:
    def save_pretrained(self, path: str) -> None:
        (Path(path) / "tokenizer.json").write_text("{}")


def test_final_save_is_atomic(tmp_path: Path) -> None:
    from llmkit.run_folder import RunFolder

    def save_model_atomically(trainer: FakeTrainer, tokenizer: FakeTokenizer, output: Path) -> None:
        RunFolder(output, output).save_model(trainer, tokenizer)

    output = tmp_path / "run"
    output.mkdir()
    (output / "model.safetensors").write_bytes(b"the good model")
    (output / "config.json").write_text('{"old": true}')
    with pytest.raises(KeyboardInterrupt):
        save_model_atomically(FakeTrainer(crash=True), FakeTokenizer(), output)
    assert (output / "model.safetensors").read_bytes() == b"the good model"
    assert (output / "config.json").read_text() == '{"old": true}'

    save_model_atomically(FakeTrainer(crash=False), FakeTokenizer(), output)  # a new save clears the leftover
    assert (output / "model.safetensors").read_bytes() == b"new weights, first half"
    assert sorted(p.name for p in output.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
