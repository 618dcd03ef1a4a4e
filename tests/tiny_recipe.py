"""The tests' one set of builders and runners: tiny recipes (models built from config, tokenizers trained on the
data), data files, the CLI run in this process (`invoke`) or as a real process (`run_llmkit`). The offline
and single-thread settings are made once, in conftest.py."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from click.testing import Result
from typer.testing import CliRunner

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


#: `model.from_config` of a GPT-2 small enough to train in seconds
TINY_GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 64}


def task_recipe(
    task: str,
    train: str | Path,
    output: str | Path,
    *,
    model: str | dict[str, Any] = "bert",
    eval: str | Path | None = None,
    vocab_size: int = 200,
    data: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A recipe mapping for any task: a tiny BERT or GPT-2 from config (or the given config), a tokenizer
    trained on the data; `sections` adds whole sections (`qa={...}`, `generation={...}`)."""
    config = {"bert": tiny_bert(), "gpt2": TINY_GPT2}.get(model, model) if isinstance(model, str) else model
    kind = "wordpiece" if config["model_type"] == "bert" else "bpe"
    files = {"train": str(train), **({"eval": str(eval)} if eval is not None else {})}
    return {
        "task": task,
        "model": {"from_config": dict(config)},
        "tokenizer": {"train": {"kind": kind, "vocab_size": vocab_size, "min_frequency": 1}},
        "data": {**files, **(data or {})},
        "training": {"output_dir": str(output), **(training or {})},
        **sections,
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


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
        "model": {"from_config": dict(TINY_GPT2)},
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


def invoke(*args: str | Path, env: dict[str, str | None] | None = None, input: str | None = None) -> Result:
    """Run the CLI in this process (no start-up cost); LLMKIT_DEBUG is unset unless `env` sets it."""
    from llmkit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], input=input, env={"LLMKIT_DEBUG": None, **(env or {})})


def subprocess_env(**changes: str) -> dict[str, str]:
    """This environment for a child process: offline, one math thread each (several processes share 2 cores),
    unbuffered output, no LLMKIT_DEBUG."""
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    environment = {**os.environ, **offline, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **changes}
    environment.pop("LLMKIT_DEBUG", None)
    return environment


def llmkit_command(*args: Any) -> list[str]:
    """`python -m llmkit ARGS` with this interpreter, so no PATH lookup is involved."""
    return [sys.executable, "-m", "llmkit", *map(str, args)]


def run_llmkit(*args: Any, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The CLI as a real process: what a terminal sees (exit code, stdout, stderr)."""
    return subprocess.run(
        llmkit_command(*args), env=subprocess_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under a folder with its size, modification time and content hash (to prove it untouched)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns, sha256(path))
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
