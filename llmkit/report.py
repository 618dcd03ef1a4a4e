"""What a run folder says about its run: the model card and the loss curve for people, and `run.json`'s facts
for reproducing and comparing runs (`RunFolder` writes them all)."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit import __version__
from llmkit.data import fingerprints
from llmkit.launch import strategy
from llmkit.tasks.mechanisms.packing import token_count

if TYPE_CHECKING:
    from datasets import DatasetDict

    from llmkit.recipe import Recipe
    from llmkit.tasks.base import Prepared


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


def model_card(recipe: Recipe, metrics: dict[str, Any], auto_class: str, command: str | None = None) -> str:
    """A README.md that says what the model is, what it was trained on, how well it does and how to load it.

    `auto_class`: the Auto class the run's task used (it can depend on the architecture, e.g. T5 vs GPT-2);
    `command`: the command line that made the run."""
    split = recipe.data.validation_split
    held_out = recipe.data.eval or (f"{split:.0%} of the training data, held out" if split else "none")
    training, evaluation = split_metrics(metrics)
    auto = auto_class
    adapter = recipe.peft is not None
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


def git_commit() -> str | None:
    """The commit of the working folder's repository (the user's project), when there is one."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return None
    return done.stdout.strip() or None


def peak_memory(device_type: str) -> dict[str, float]:
    """The run's peak memory: resident set of this process (`ru_maxrss`: KiB on Linux, bytes on macOS), and on a
    GPU the most the CUDA allocator held."""
    import resource

    import torch

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    facts = {"peak_rss_mb": round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)}
    if device_type == "cuda" and torch.cuda.is_available():
        facts["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return facts


def mean_tokens(features: Any) -> float:
    """Real (unpadded) input tokens per training example: samples/s × this = tokens/s."""
    return token_count(features) / max(len(features), 1)


def run_facts(recipe: Recipe, started: float, trainer: Any, prepared: Prepared, raw: DatasetDict) -> dict[str, Any]:
    """Versions, device, seed, data fingerprints, timing and peak memory: what it takes to reproduce or compare
    a run; and how it was spread (strategy, world size, machines, per-process and global batch), as it ran."""
    import torch
    import transformers

    train_log = next((e for e in reversed(trainer.state.log_history) if "train_runtime" in e), {})
    samples_per_second = train_log.get("train_samples_per_second")
    tokens_per_second = None
    if samples_per_second and prepared.train is not None:
        tokens_per_second = round(samples_per_second * mean_tokens(prepared.train), 1)
    return {
        "llmkit": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "seed": recipe.training.seed,
        "device": str(trainer.args.device),
        **strategy(trainer),
        "data_fingerprints": fingerprints(recipe.data, raw),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": round(time.time() - started, 2),
        "train_runtime": train_log.get("train_runtime"),
        "train_samples_per_second": samples_per_second,
        "tokens_per_second": tokens_per_second,
        "global_step": trainer.state.global_step,
        **peak_memory(trainer.args.device.type),
    }
