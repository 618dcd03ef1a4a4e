"""Start-up: `llmkit --help` next to `python -c "import transformers"`, and a tiny recipe's time to first step.

Each command runs in a fresh process and is timed from outside (subprocess wall time), alternating the two
commands so both see the same machine load; the median of several runs is reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Result, clock, interleaved, median

BIN = Path(sys.executable).parent


def wall(command: list[str], env: dict[str, str] | None = None) -> float:
    start = clock()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    return clock() - start


def help_timing(repeats: int) -> Result:
    llmkit = [str(BIN / "llmkit"), "--help"]
    transformers = [sys.executable, "-c", "import transformers"]
    wall(llmkit), wall(transformers)  # warm the file cache
    times = interleaved({"llmkit": lambda: wall(llmkit), "transformers": lambda: wall(transformers)}, repeats)
    ours, theirs = median(times["llmkit"]), median(times["transformers"])
    return Result(
        "`llmkit --help` seconds (vs `import transformers`)",
        ours,
        theirs,
        unit="s",
        goal="<= 0.10",
        key="help_ratio",
        note=f"median of {repeats}; goal also ≤ 0.3 s absolute",
        details={"llmkit_help_seconds": times["llmkit"], "import_transformers_seconds": times["transformers"]},
    )


TINY_RECIPE = """\
task: clm
model:
  from_config: {model_type: gpt2, n_layer: 2, n_head: 2, n_embd: 64, n_positions: 64}
tokenizer:
  train: {kind: bpe, vocab_size: 500}
data:
  train: builtin:pydoc-topics
  max_train_samples: 20
  max_length: 64
training:
  output_dir: OUTPUT
  max_steps: 1
  per_device_train_batch_size: 4
  report_to: none
"""


def first_step_timing(repeats: int) -> Result:
    """Wall time of `llmkit pretrain` on a tiny recipe with max_steps=1: process start, imports, recipe,
    data, tokenizer training, model build, one optimizer step, saving the run folder."""
    with tempfile.TemporaryDirectory() as folder:
        recipe = Path(folder) / "tiny.yaml"
        recipe.write_text(TINY_RECIPE.replace("OUTPUT", str(Path(folder) / "run")), encoding="utf-8")
        env = {**os.environ, "HF_DATASETS_CACHE": str(Path(folder) / "cache")}
        command = [str(BIN / "llmkit"), "pretrain", str(recipe), "--overwrite"]
        times = [wall(command, env) for _ in range(repeats)]
    return Result(
        "tiny recipe: `llmkit pretrain` 1 step, end to end",
        median(times),
        unit="s",
        key="first_step_seconds",
        note="process start → one training step → run folder written",
        details={"seconds": times},
    )


def run(quick: bool) -> list[Result]:
    help_result = help_timing(7 if quick else 15)
    seconds = Result(
        "`llmkit --help` seconds",
        help_result.llmkit,
        unit="s",
        goal="<= 0.3",
        key="help_seconds",
        score=help_result.llmkit,
        note="subprocess wall time, median",
    )
    return [seconds, help_result, first_step_timing(1 if quick else 5)]
