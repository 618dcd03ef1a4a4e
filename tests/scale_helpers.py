"""Tiny recipes and run-history helpers shared by the LoRA, multi-process and resume tests (the CLI runners
are tiny_recipe.py's).

Everything is offline and small: a 2-layer GPT-2 built from config, a tokenizer trained on the built-in
Python-docs corpus, 32-token blocks. One BLAS thread per process: on a shared 2-core machine more threads
make a tiny model many times slower.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.tiny_recipe import llmkit_command, one_thread, run_llmkit, subprocess_env, write_recipe

__all__ = ["llmkit_command", "run_llmkit", "subprocess_env", "write_recipe"]  # the runners, from tiny_recipe

NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def clm_recipe(output: Path, dropout: bool = True, **training: Any) -> dict[str, Any]:
    """A tiny causal-LM recipe (GPT-2 from config); `training` entries override the defaults."""
    model = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64}
    return {
        "task": "clm",
        "model": {"from_config": model if dropout else {**model, **NO_DROPOUT}},
        "tokenizer": {"train": {"kind": "bpe", "vocab_size": 400}},
        "data": {
            "train": "builtin:pydoc-topics",
            "validation_split": 0.1,
            "max_length": 32,
            "max_train_samples": 20,
            "max_eval_samples": 2,
        },
        "training": {
            "output_dir": str(output),
            "max_steps": 12,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 16,
            "learning_rate": 3.0e-3,
            "warmup_steps": 2,
            "logging_steps": 1,
            "save_steps": 4,
            "seed": 7,
            "report_to": "none",
            **training,
        },
    }


def train_in_process(recipe_path: Path, *overrides: str, resume: bool = False) -> tuple[dict[str, Any], list[dict]]:
    """Train through `pipeline.train` with one BLAS thread; returns (metrics, log history)."""
    from llmkit import pipeline
    from llmkit.recipe import load_recipe

    with one_thread():
        recipe = load_recipe(recipe_path, list(overrides))
        metrics = pipeline.train(recipe, resume=resume)
    return metrics, log_history(Path(recipe.training.output_dir))


def log_history(output: Path) -> list[dict[str, Any]]:
    """The run's final log history (rank 0's), or its newest checkpoint's when the run did not finish."""
    from llmkit.trainer import latest_checkpoint

    state = output / "trainer_state.json"
    if not state.is_file():
        checkpoint = latest_checkpoint(output)
        if checkpoint is None:
            return []
        state = checkpoint / "trainer_state.json"
    return json.loads(state.read_text())["log_history"]


def losses(log_history: list[dict[str, Any]]) -> dict[int, float]:
    """Training loss by step, from a Trainer's log history."""
    return {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry}
