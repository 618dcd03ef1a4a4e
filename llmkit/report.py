"""What a run folder says about its run, for people: the model card and the loss curve (`RunFolder` writes them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmkit.recipe import Recipe


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
