"""The run folder: final model (written atomically), resolved recipe, metrics, run facts, model card, loss curve."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Trainer

    from llmkit.recipe import Recipe

RUN_MARKERS = ("config.json", "adapter_config.json")


def check_output_dir(path: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to write over a previous run unless asked; refuse an output folder we cannot write."""
    if path.exists() and not path.is_dir():
        raise LlmkitError(f"recipe field `training.output_dir`: {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        raise LlmkitError(
            f"output folder {path} is not empty: pass --overwrite to replace it or --resume to continue it"
        )
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise LlmkitError(f"recipe field `training.output_dir`: cannot create {path}: {existing} is a file")
    if not _can_write_in(existing):
        raise LlmkitError(f"recipe field `training.output_dir`: {existing} is not writable")


def _can_write_in(folder: Path) -> bool:
    """Try it (a permission check alone is wrong for root, read-only mounts and full disks)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def clear_output_dir(path: Path) -> None:
    """Empty a previous run's folder (only called with --overwrite, once everything has validated)."""
    if path.is_dir():
        shutil.rmtree(path)


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in RUN_MARKERS)


def save_model_atomically(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, output: Path) -> None:
    """Write the final model next to the run, then move it in: an interrupted save never leaves a half model."""
    staging = output / ".final.tmp"
    if trainer.is_world_process_zero() and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()  # no process writes into a folder another is still removing
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(staging))
        (staging / "training_args.bin").unlink(missing_ok=True)
        for item in staging.iterdir():
            os.replace(item, output / item.name)
        staging.rmdir()


def write_json(path: Path, content: Any) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(content, indent=2, sort_keys=True, default=_jsonable) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers only, rounded for reading; non-finite values kept as strings JSON can hold."""
    result: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, int | float):
            result[key] = value if math.isfinite(value) else str(value)
    return result


def write_predictions(path: Path, predictions: list[dict[str, Any]]) -> None:
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for record in predictions:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(temporary, path)


def write_recipe(output: Path, recipe: Recipe) -> None:
    (output / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")


def model_card(recipe: Recipe, metrics: dict[str, Any], adapter: bool, auto_class: str | None = None) -> str:
    """A README.md that says what the model is, what it was trained on, how well it does and how to load it.

    `auto_class`: the Auto class the run's task used (it can depend on the architecture, e.g. T5 vs GPT-2)."""
    from llmkit.tasks import TASKS

    base = recipe.model.name_or_path or f"{recipe.model.from_config} (built from config)"
    split = recipe.data.validation_split
    held_out = recipe.data.eval or (f"{split:.0%} of the training data, held out" if split else "none")
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    auto = auto_class or TASKS[recipe.task].auto_class_name
    run = recipe.training.output_dir
    load = (
        # The tuned config (label names, pad id) lies beside the adapter; the base weights come from the base model.
        f"from peft import PeftModel\nfrom transformers import AutoConfig, AutoTokenizer, {auto}\n"
        f'base = {auto}.from_pretrained("{base}", config=AutoConfig.from_pretrained("{run}"))\n'
        f'model = PeftModel.from_pretrained(base, "{run}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{run}")\n'
        f"# or a plain transformers folder: llmkit merge {run} {run}-merged"
        if adapter
        else f"from transformers import {auto}, AutoTokenizer\n"
        f'model = {auto}.from_pretrained("{recipe.training.output_dir}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{recipe.training.output_dir}")'
    )
    return f"""# {Path(recipe.training.output_dir).name}

Trained with llmkit (`task: {recipe.task}`).

- Base model: {base}
- Data: {recipe.data.train}{f" (config {recipe.data.config_name})" if recipe.data.config_name else ""}; eval: {held_out}
- Max length: {recipe.data.max_length}; seed: {recipe.training.seed}
- Fine-tuning: {"LoRA r=" + str(recipe.peft.r) if recipe.peft else "full"}

## Eval metrics

| metric | value |
| --- | --- |
{rows or "| (no eval split) | |"}

## Load it

```python
{load}
```

Or: `llmkit predict {recipe.training.output_dir} --text "..."`. The full recipe is in `recipe.yaml`.
"""


def plot_losses(log_history: list[dict[str, Any]], path: Path) -> bool:
    """Draw train and eval loss against the step; returns False when there is nothing to draw."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        axes.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
