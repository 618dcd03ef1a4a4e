"""A tiny offline run (2-layer GPT-2 from config, BPE trained on a generated corpus) and CLI helpers, shared by
test_errors.py, test_run_folder.py and test_check.py."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from click.testing import Result
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the bird", "a child"]
VERBS = ["sees", "likes", "follows", "feeds", "paints", "hears"]
OBJECTS = ["the ball", "a red boat", "the garden", "some bread", "the river", "a small house"]
PLACES = ["in the morning", "at night", "near the school", "after lunch"]
BLOCK = 32  # data.max_length of the tiny recipe


def tiny_bert(layers: int = 1, hidden: int = 32) -> dict[str, Any]:
    """`model.from_config` of a BERT small enough to train in seconds."""
    return {
        "model_type": "bert",
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 64,
    }


def write_corpus(path: Path, lines: int = 240, seed: int = 0) -> Path:
    """Short sentences from a small grammar: a 2-layer model learns them within a few dozen steps."""
    rng = random.Random(seed)
    text = "".join(
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}.\n"
        for _ in range(lines)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def clm_recipe(train: str | Path, output: str | Path, **training: Any) -> dict[str, Any]:
    """The tiny causal-LM recipe as a mapping; `training` entries override its training section."""
    return {
        "task": "clm",
        "model": {"from_config": {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 64}},
        "tokenizer": {"train": {"kind": "bpe", "vocab_size": 300}},
        "data": {"train": str(train), "validation_split": 0.1, "max_length": BLOCK},
        "training": {
            "output_dir": str(output),
            "max_steps": 30,
            "per_device_train_batch_size": 8,
            "learning_rate": 3.0e-3,
            "logging_steps": 5,
            "save_steps": 15,
            "eval_strategy": "steps",
            "eval_steps": 15,
            "seed": 7,
            **training,
        },
    }


@contextmanager
def one_thread() -> Iterator[None]:
    """Train tiny models on one CPU thread: on a busy shared machine two OpenMP threads make them 10-20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_recipe(path: Path, content: dict[str, Any] | str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return path


def invoke(*args: str | Path, env: dict[str, str | None] | None = None) -> Result:
    """Run the CLI in this process (no start-up cost); LLMKIT_DEBUG is unset unless `env` sets it."""
    from llmkit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"LLMKIT_DEBUG": None, **(env or {})})


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under a folder with its size, modification time and content hash (to prove it untouched)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns, sha256(path))
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
