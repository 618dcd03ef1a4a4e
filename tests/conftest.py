"""Shared test set-up: offline hub, the repo root, the shared data folder, and a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One math thread per process: tiny models gain nothing from more, and a busy 2-core machine loses a lot.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("LLMKIT_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
os.environ["LLMKIT_DATA_DIR"] = str(DATA_DIR)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def data_dir() -> Path:
    """The shared real-data folder; tests that need it skip when it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared data folder {DATA_DIR} is absent")
    return DATA_DIR


def run_cli(*args: str):
    """Invoke the Typer app in-process; returns click's Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def cli():
    return run_cli
