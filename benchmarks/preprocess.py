"""Preprocessing: llmkit's tokenize + pack vs the reference `run_clm.py` pipeline, and cache reuse.

Same text file (tinyshakespeare, read by the `text` builder with line breaks kept), same tokenizer (GPT-2),
same block size. The reference is the transformers example's code: a batched `map` of the tokenizer, then a
batched `map` of `group_texts`. llmkit's side is its real path: `data.load_raw` → `TASKS["clm"].preprocess`.

Every measurement runs in a fresh process with a fresh, empty HF_DATASETS_CACHE, so nothing is reused by
accident; the cache measurement then runs the same recipe again in a new process over the same cache folder.
Only preprocessing is timed (loading the raw text is the same `load_dataset("text")` call on both sides).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from itertools import chain
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Result, clock, data_dir, interleaved, median, shakespeare_file

BLOCK = 512


def reference(text_file: str, tokenizer_dir: str) -> tuple[float, int]:
    """transformers/examples/pytorch/language-modeling/run_clm.py, preprocessing part, verbatim in substance."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    raw_datasets = load_dataset("text", data_files={"train": text_file}, keep_linebreaks=True)
    column_names = list(raw_datasets["train"].features)
    start = clock()

    def tokenize_function(examples: dict[str, list]) -> Any:
        return tokenizer(examples["text"])

    tokenized_datasets = raw_datasets.map(
        tokenize_function, batched=True, remove_columns=column_names, desc="Running tokenizer on dataset"
    )

    def group_texts(examples: dict[str, list]) -> dict[str, list]:
        concatenated_examples = {k: list(chain(*examples[k])) for k in examples}
        total_length = len(concatenated_examples[next(iter(examples.keys()))])
        total_length = (total_length // BLOCK) * BLOCK
        result = {
            k: [t[i : i + BLOCK] for i in range(0, total_length, BLOCK)] for k, t in concatenated_examples.items()
        }
        result["labels"] = result["input_ids"].copy()
        return result

    lm_datasets = tokenized_datasets.map(group_texts, batched=True, desc=f"Grouping texts in chunks of {BLOCK}")
    return clock() - start, len(lm_datasets["train"]) * BLOCK


def llmkit(text_file: str, tokenizer_dir: str) -> tuple[float, int]:
    """llmkit's path for a clm recipe: load the raw data, then the task's preprocess."""
    from llmkit.data import load_raw, map_columns
    from llmkit.models import load_tokenizer
    from llmkit.recipe import recipe_from_mapping
    from llmkit.tasks import TASKS

    recipe = recipe_from_mapping(
        {
            "task": "clm",
            "model": {"from_config": {"model_type": "gpt2"}},
            "tokenizer": {"name_or_path": tokenizer_dir},
            "data": {"train": text_file, "max_length": BLOCK},
            "training": {"output_dir": "unused"},
        }
    )
    task = TASKS["clm"]
    tokenizer = load_tokenizer(recipe.tokenizer, recipe.model)
    raw = map_columns(load_raw(recipe.data), recipe.data.columns, task.roles)
    start = clock()
    prepared = task.preprocess(recipe, raw, tokenizer)
    return clock() - start, len(prepared.train) * BLOCK


SIDES = {"llmkit": llmkit, "reference": reference}


def worker(side: str, cache: str, text_file: str, tokenizer_dir: str) -> float:
    """Run one side in a fresh process whose datasets cache is `cache`; returns its preprocessing seconds."""
    env = {**os.environ, "HF_DATASETS_CACHE": cache, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "benchmarks.preprocess", side, text_file, tokenizer_dir]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{side} worker failed: {done.stderr.strip().splitlines()[-1:]}")
    seconds, tokens = json.loads(done.stdout.strip().splitlines()[-1])
    worker.tokens[side] = tokens  # type: ignore[attr-defined]
    return seconds


worker.tokens = {}  # type: ignore[attr-defined]


def inputs(folder: Path) -> tuple[str, str, str]:
    """(text file, tokenizer folder, what they are): tinyshakespeare + GPT-2, or the builtin corpus + a BPE."""
    text = shakespeare_file()
    root = data_dir()
    gpt2 = root / "tokenizers" / "gpt2" if root else None
    if text is not None and gpt2 is not None and gpt2.is_dir():
        return str(text), str(gpt2), "tinyshakespeare, GPT-2 tokenizer"
    from benchmarks.common import documents, gpt2_tokenizer

    corpus, texts = documents()
    path = folder / "corpus.txt"
    path.write_text("\n".join(texts), encoding="utf-8")
    name, tokenizer = gpt2_tokenizer()
    tokenizer.save_pretrained(folder / "tokenizer")
    return str(path), str(folder / "tokenizer"), f"{corpus}, {name} tokenizer"


def run(quick: bool) -> list[Result]:
    repeats = 3 if quick else 5
    with tempfile.TemporaryDirectory() as folder:
        text_file, tokenizer_dir, what = inputs(Path(folder))
        caches: list[str] = []

        def cold(side: str) -> float:
            cache = tempfile.mkdtemp(dir=folder, prefix=f"{side}-cache-")
            if side == "llmkit":
                caches.append(cache)
            return worker(side, cache, text_file, tokenizer_dir)

        times = interleaved({"llmkit": lambda: cold("llmkit"), "reference": lambda: cold("reference")}, repeats)
        warm = [worker("llmkit", cache, text_file, tokenizer_dir) for cache in caches[: max(2, repeats - 2)]]
    tokens = worker.tokens["llmkit"]  # type: ignore[attr-defined]
    reference_tokens = worker.tokens["reference"]  # type: ignore[attr-defined]
    ours, theirs = median(times["llmkit"]), median(times["reference"])
    rate = Result(
        "tokenize + pack tokens/s (vs run_clm map + group_texts)",
        tokens / ours,
        reference_tokens / theirs,
        unit="tok/s",
        goal=">= 1.0",
        key="preprocess_ratio",
        note=f"{what}; block {BLOCK}; fresh HF_DATASETS_CACHE per run; {tokens} vs {reference_tokens} tokens kept",
        details={"llmkit_seconds": times["llmkit"], "reference_seconds": times["reference"]},
    )
    cached = median(warm)
    cache = Result(
        "preprocessing seconds, second run of the same recipe (vs first run)",
        cached,
        ours,
        unit="s",
        goal=">= 20",
        key="cache_speedup",
        score=ours / cached,
        note="speed-up = first ÷ second; new process, same datasets cache folder",
        details={"first_seconds": times["llmkit"], "second_seconds": warm},
    )
    return [rate, cache]


if __name__ == "__main__":
    side, text_file, tokenizer_dir = sys.argv[1:4]
    seconds, tokens = SIDES[side](text_file, tokenizer_dir)
    print(json.dumps([seconds, tokens]))
