"""A trained tokenizer is reproducible: the same texts give byte-identical files in separate processes.

The stock WordPiece trainer numbers its `##` pieces in hash-map order (huggingface/tokenizers#1794), so two runs
differ; each process here has its own hash seeds (Python's and the Rust trainer's) and its own thread count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

KINDS = ("bpe", "wordpiece")

# Trains each kind on the CI reviews plus the builtin pydoc corpus and saves it under argv[1]/<kind>.
WORKER = """
import json, sys
from pathlib import Path

import pytest
from pydoc_data.topics import topics
from llmkit.models import train_tokenizer
from llmkit.recipe import TokenizerTrainSection

out, reviews = Path(sys.argv[1]), Path(sys.argv[2])
texts = [json.loads(line)["sentence"] for line in reviews.read_text().splitlines() if line.strip()]
texts += [topics[key] for key in sorted(topics)]
for kind in ("bpe", "wordpiece"):
    spec = TokenizerTrainSection(kind=kind, vocab_size=400, min_frequency=1)
    train_tokenizer(spec, iter(texts)).save_pretrained(out / kind)
"""


def _start(out: Path, hash_seed: str, threads: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONHASHSEED": hash_seed,
        "TOKENIZERS_PARALLELISM": "true",
        "RAYON_NUM_THREADS": threads,
    }
    reviews = REPO / "recipes" / "ci" / "data" / "reviews-train.jsonl"
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(out), str(reviews)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.mark.integration
def test_trained_tokenizers_are_identical_across_processes(tmp_path: Path) -> None:
    runs = [tmp_path / "a", tmp_path / "b"]
    procs = [_start(runs[0], "1", "1"), _start(runs[1], "2", "2")]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    for kind in KINDS:
        first, second = _files(runs[0] / kind), _files(runs[1] / kind)
        assert "tokenizer.json" in first
        assert first.keys() == second.keys()
        for name in first:
            assert first[name] == second[name], f"{kind}: {name} differs between two trainings of the same texts"
    vocab = json.loads((runs[0] / "wordpiece" / "tokenizer.json").read_text())["model"]["vocab"]
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
