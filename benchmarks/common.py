"""What every benchmark shares: the result row, honest timing (warm-up, interleaving, medians) and the data.

Ratios are always llmkit ÷ baseline, measured back to back in the same process (or the same run), so noise
from other work on the machine hits both sides alike.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GOAL = re.compile(r"^\s*(>=|<=)\s*([0-9.]+)")


@dataclass
class Result:
    """One table row. `score` (default llmkit ÷ baseline, or the llmkit value when there is no baseline) is
    what `goal` is checked against and what summary.json stores under `key`."""

    name: str
    llmkit: float | None
    baseline: float | None = None
    unit: str = ""
    goal: str | None = None
    key: str | None = None
    score: float | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.score is None and self.llmkit is not None:
            self.score = self.llmkit / self.baseline if self.baseline else self.llmkit

    @property
    def passed(self) -> bool | None:
        match = GOAL.match(self.goal or "")
        if match is None or self.score is None:
            return None
        bar = float(match.group(2))
        return self.score >= bar if match.group(1) == ">=" else self.score <= bar

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def skipped(name: str, why: str, key: str | None = None) -> Result:
    """A row for a measurement that could not run here (no data, no GPU, module not written yet)."""
    return Result(name, None, key=key, note=f"skipped: {why}")


# --------------------------------------------------------------------------- timing


def clock() -> float:
    return time.perf_counter()


def median(values: list[float]) -> float:
    return statistics.median(values)


def interleaved(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each side `repeats` times, alternating the order every round (A B, B A, ...), so slow drifts in the
    machine's load fall on both sides alike. Each callable returns its own measurement."""
    names = list(sides)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            results[name].append(sides[name]())
    return results


def time_call(function: Callable[[], Any]) -> float:
    start = clock()
    function()
    return clock() - start


# --------------------------------------------------------------------------- data


def data_dir() -> Path | None:
    """The shared real-data folder (LLMKIT_DATA_DIR, default ../shared/data), or None when absent."""
    path = Path(os.environ.get("LLMKIT_DATA_DIR", REPO.parent / "shared" / "data"))
    return path if path.is_dir() else None


def shakespeare_file() -> Path | None:
    root = data_dir()
    path = root / "tinyshakespeare" / "input.txt" if root else None
    return path if path and path.is_file() else None


def documents() -> tuple[str, list[str]]:
    """A corpus of documents with varied lengths: tinyshakespeare's speeches (blank-line separated), or the
    paragraphs of the Python documentation topics that ship with every Python when the shared data is absent."""
    path = shakespeare_file()
    if path is not None:
        text = path.read_text(encoding="utf-8")
        return "tinyshakespeare speeches", [part.strip() for part in text.split("\n\n") if part.strip()]
    from llmkit.data import builtin_corpus

    topics = builtin_corpus("pydoc-topics", "train")["text"]
    return "pydoc-topics paragraphs (builtin)", [p.strip() for t in topics for p in t.split("\n\n") if p.strip()]


def gpt2_tokenizer() -> tuple[str, Any]:
    """The real GPT-2 tokenizer from the shared data, or a BPE trained on the builtin corpus."""
    from transformers import AutoTokenizer

    from llmkit.models import ensure_pad_token

    root = data_dir()
    folder = root / "tokenizers" / "gpt2" if root else None
    if folder is not None and (folder / "vocab.json").is_file():
        return "gpt2", ensure_pad_token(AutoTokenizer.from_pretrained(str(folder)))
    from llmkit.data import builtin_corpus
    from llmkit.models import train_tokenizer
    from llmkit.recipe import TokenizerTrainSection

    texts = builtin_corpus("pydoc-topics", "train")["text"]
    return "bpe-8000 (trained)", train_tokenizer(TokenizerTrainSection(kind="bpe", vocab_size=8000), texts)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "device": gpu or f"cpu ({os.cpu_count()} cores)",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
