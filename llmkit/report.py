"""What a run folder says about its run, for people: the model card and the loss curve (`RunFolder` writes them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmkit.recipe import Recipe


def base_model(recipe: Recipe) -> str:
    """The base model as a reader would name it: the checkpoint, or the architecture built from config."""
    if recipe.model.name_or_path:
        return f"`{recipe.model.name_or_path}`"
    spec = dict(recipe.model.from_config or {})
    kind = spec.pop("model_type", "?")
    settings = ", ".join(f"{key}={value}" for key, value in spec.items())
    return f"`{kind}` built from config ({settings}), untrained" if settings else f"`{kind}` built from config"


def metric_table(metrics: dict[str, Any]) -> str:
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "| metric | value |\n| --- | --- |\n" + "\n".join(rows)


def split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training figures, evaluation figures), without the timing bookkeeping."""
    kept = {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second", "_preparation_time"))}
    evaluation = {k: v for k, v in kept.items() if k.startswith("eval_") or k == "perplexity"}
    training = {k: v for k, v in kept.items() if k not in evaluation and k != "total_flos"}
    return training, evaluation


def model_card(
    recipe: Recipe, metrics: dict[str, Any], adapter: bool, auto_class: str | None = None, command: str | None = None
) -> str:
    """A README.md that says what the model is, what it was trained on, how well it does and how to load it.

    `auto_class`: the Auto class the run's task used (it can depend on the architecture, e.g. T5 vs GPT-2);
    `command`: the command line that made the run."""
    from llmkit.tasks import TASKS

    split = recipe.data.validation_split
    held_out = recipe.data.eval or (f"{split:.0%} of the training data, held out" if split else "none")
    training, evaluation = split_metrics(metrics)
    auto = auto_class or TASKS[recipe.task].auto_class_name
    run = recipe.training.output_dir
    base = recipe.model.name_or_path or run
    load = (
        # The tuned config (label names, pad id) lies beside the adapter; the base weights come from the base model.
        f"from peft import PeftModel\nfrom transformers import AutoConfig, AutoTokenizer, {auto}\n"
        f'base = {auto}.from_pretrained("{base}", config=AutoConfig.from_pretrained("{run}"))\n'
        f'model = PeftModel.from_pretrained(base, "{run}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{run}")\n'
        f"# or a plain transformers folder: llmkit merge {run} {run}-merged"
        if adapter
        else f"from transformers import {auto}, AutoTokenizer\n"
        f'model = {auto}.from_pretrained("{run}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{run}")'
    )
    made = f"`{command}`" if command else "`recipe.yaml` (resolved) in this folder"
    return f"""# {Path(run).name}

Trained with llmkit (`task: {recipe.task}`).

- Base model: {base_model(recipe)}
- Data: {recipe.data.train}{f" (config {recipe.data.config_name})" if recipe.data.config_name else ""}; eval: {held_out}
- Max length: {recipe.data.max_length}; seed: {recipe.training.seed}
- Fine-tuning: {"LoRA r=" + str(recipe.peft.r) if recipe.peft else "full"}
- Made by: {made}

## Training

{metric_table(training) if training else "(no training figures)"}

## Evaluation

{metric_table(evaluation) if evaluation else "(no eval split)"}

## Load it

```python
{load}
```

Or: `llmkit predict {run} --text "..."`. The full recipe is in `recipe.yaml`.
"""


def merged_card(adapter_dir: Path, out_dir: Path, recipe: Recipe, auto_class: str) -> str:
    """The card of a `merge` output: a plain model folder made from a LoRA run."""
    return f"""# {out_dir.name}

A LoRA run merged into its base model with llmkit (`task: {recipe.task}`): a plain transformers model.

- LoRA run: `{adapter_dir}` (its README.md has the training and eval figures)
- Base model: {base_model(recipe)}
- Made by: `llmkit merge {adapter_dir} {out_dir}`

## Load it

```python
from transformers import {auto_class}, AutoTokenizer
model = {auto_class}.from_pretrained("{out_dir}")
tokenizer = AutoTokenizer.from_pretrained("{out_dir}")
```

Or: `llmkit predict {out_dir} --text "..."`.
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
