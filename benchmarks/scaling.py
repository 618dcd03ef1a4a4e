"""Cost as the work grows: LM preprocessing time and peak memory at 1×, 4× and 16× tiny-shakespeare, read into
memory or streamed (`data.streaming: true`), and training step time at `max_length` 128, 256 and 512.

Every measurement runs in a fresh child process (`python -m benchmarks.scaling --child ...`), so one
measurement's memory cannot inflate the next one's peak; each child gets its own empty `datasets` cache, so
nothing is read back from an earlier run. Preprocessing is what `llmkit pretrain` does before its first step:
`Run.prepare` + `Run.features` (read, tokenize with the real GPT-2 tokenizer, pack into 512-token blocks); a
stream does that work while training, so its side reads every block of the stream once. Peak RSS is the
child's `ru_maxrss`, its RSS after the imports is subtracted for the growth column.

    python -m benchmarks.scaling [--quick]   # alone: merges its keys into results/summary.json
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Result, data_dir, shakespeare_file, skipped

RESULTS = REPO / "benchmarks" / "results"
COPIES = (1, 4, 16, 64)  # --quick: the first three
LENGTHS = (128, 256, 512)
BLOCK = 512
TINY = {"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": 512}


def rss_mib() -> float:
    """This process's resident set now (MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def recipe(corpus: Path, folder: Path, streaming: bool, max_length: int = BLOCK, steps: int = 1) -> Any:
    from llmkit.recipe import recipe_from_mapping

    root = data_dir()
    assert root is not None
    return recipe_from_mapping(
        {
            "task": "clm",
            "model": {"from_config": dict(TINY)},
            "tokenizer": {"name_or_path": str(root / "tokenizers" / "gpt2")},
            "data": {"train": str(corpus), "max_length": max_length, "streaming": streaming},
            "training": {
                "output_dir": str(folder / "out"),
                "max_steps": steps,
                "per_device_train_batch_size": 8,
                "logging_steps": 10_000,
                "save_strategy": "no",
                "report_to": "none",
                "seed": 0,
            },
        }
    )


def child_preprocess(corpus: Path, folder: Path, streaming: bool) -> dict[str, Any]:
    """Read, tokenize and pack one corpus as a run would (a stream: every block read once)."""
    import time

    import datasets  # noqa: F401  (imports are start-up, not preprocessing: done before the clock starts)
    import transformers  # noqa: F401

    from llmkit.run import Run

    settings = recipe(corpus, folder, streaming)
    before = rss_mib()
    start = time.perf_counter()
    run = Run.prepare(settings)
    prepared = run.features()
    blocks = sum(1 for _ in prepared.train) if streaming else len(prepared.train)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "blocks": blocks, "peak_rss_mib": peak_mib(), "rss_before_mib": before}


def child_steps(corpus: Path, folder: Path, max_length: int, steps: int) -> dict[str, Any]:
    """Seconds per optimizer step of the tiny GPT-2 at one block length (the first step, a warm-up, left out)."""
    import time

    from transformers import TrainerCallback

    from llmkit.run import Run
    from llmkit.trainer import build_trainer, training_arguments

    run = Run.prepare(recipe(corpus, folder, False, max_length, steps + 1))
    prepared = run.features()
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            times.append(time.perf_counter())

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            times.append(time.perf_counter())

    args = training_arguments(run.recipe, disable_tqdm=True)
    trainer = build_trainer(run.task, run.recipe, args, run.model(trainable=True), run.tokenizer, prepared, [Clock()])
    trainer.train()
    per_step = [later - earlier for earlier, later in itertools.pairwise(times[1:])]
    return {"seconds_per_step": sum(per_step) / len(per_step), "steps": len(per_step), "max_length": max_length}


def measure(kind: str, folder: Path, **options: Any) -> dict[str, Any]:
    """One measurement in a fresh interpreter with its own empty datasets cache."""
    cache = Path(tempfile.mkdtemp(dir=folder))
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    command = [sys.executable, "-m", "benchmarks.scaling", "--child", kind, "--folder", str(folder)]
    command += [f"--{key}={value}" for key, value in options.items()]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {options}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def corpora(folder: Path, source: Path, sizes: tuple[int, ...]) -> dict[int, Path]:
    """Concatenated copies of the corpus, one file per size."""
    text = source.read_text(encoding="utf-8")
    paths = {}
    for copies in sizes:
        path = folder / f"shakespeare-x{copies}.txt"
        with path.open("w", encoding="utf-8") as handle:
            for _ in range(copies):
                handle.write(text)
        paths[copies] = path
    return paths


def measure_all(quick: bool, folder: Path, source: Path) -> dict[str, Any]:
    paths = corpora(folder, source, COPIES[:3] if quick else COPIES)
    megabytes = {copies: path.stat().st_size / 2**20 for copies, path in paths.items()}
    preprocess: dict[str, dict[int, dict[str, Any]]] = {"memory": {}, "stream": {}}
    for copies, path in paths.items():
        for mode in ("memory", "stream"):
            print(f"  preprocess {mode} ×{copies}", flush=True)
            preprocess[mode][copies] = measure("preprocess", folder, corpus=path, streaming=int(mode == "stream"))
    steps = {}
    for length in LENGTHS:
        print(f"  steps max_length {length}", flush=True)
        steps[length] = measure("steps", folder, corpus=paths[1], max_length=length, steps=3 if quick else 5)
    return {"megabytes": megabytes, "preprocess": preprocess, "steps": steps, "copies": list(paths)}


def results_of(measured: dict[str, Any]) -> list[Result]:
    pre, mb, steps = measured["preprocess"], measured["megabytes"], measured["steps"]
    memory, stream = pre["memory"], pre["stream"]
    sizes = measured["copies"]
    low, middle, high = sizes[0], sizes[1], sizes[-1]

    def per_mb(side: dict[int, dict[str, Any]], first: int, last: int) -> float:
        """Marginal seconds per MB between two sizes (the fixed start-up cost cancels out)."""
        return (side[last]["seconds"] - side[first]["seconds"]) / (mb[last] - mb[first])

    def growth(side: dict[int, dict[str, Any]], copies: int) -> float:
        return side[copies]["peak_rss_mib"] - side[copies]["rss_before_mib"]

    def cells(side: dict[int, dict[str, Any]]) -> str:
        return "; ".join(
            f"×{c}: {side[c]['seconds']:.1f} s, peak RSS {side[c]['peak_rss_mib']:.0f} MiB (+{growth(side, c):.0f})"
            for c in sizes
        )

    step_note = ", ".join(f"{n}: {steps[n]['seconds_per_step'] * 1000:.0f} ms" for n in LENGTHS)
    return [
        Result(
            f"LM preprocessing, in memory: marginal s/MB ×{middle}→×{high} ÷ ×{low}→×{middle}",
            per_mb(memory, middle, high),
            per_mb(memory, low, middle),
            goal="<= 1.5",
            key="scaling_preprocess_linearity",
            note=f"tiny-shakespeare ×{'/×'.join(map(str, sizes))} ({mb[low]:.1f}-{mb[high]:.1f} MB), GPT-2 "
            f"tokenizer, blocks of {BLOCK}; {cells(memory)}",
            details=measured,
        ),
        Result(
            f"LM preprocessing, streamed: peak RSS at ×{high} ÷ at ×{middle}",
            stream[high]["peak_rss_mib"],
            stream[middle]["peak_rss_mib"],
            unit="MiB",
            goal="<= 1.2",
            key="scaling_stream_rss_ratio",
            note=f"`data.streaming: true`, every block read once; {cells(stream)}; in memory ×{high} peak "
            f"{memory[high]['peak_rss_mib']:.0f} MiB",
        ),
        Result(
            f"LM preprocessing, streamed ÷ in memory: seconds at ×{high}",
            stream[high]["seconds"],
            memory[high]["seconds"],
            unit="s",
            key="scaling_stream_time_ratio",
            note="the stream tokenizes and packs during training, so this cost moves into the steps",
        ),
        Result(
            "training step time, max_length 512 ÷ 128 (GPT-2 2L/128d, batch 8)",
            steps[LENGTHS[-1]]["seconds_per_step"],
            steps[LENGTHS[0]]["seconds_per_step"],
            unit="s",
            key="scaling_step_time_ratio",
            note=f"per step: {step_note} ({steps[LENGTHS[0]]['steps']} timed steps after a warm-up step)",
        ),
    ]


def plot(measured: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre, mb, steps = measured["preprocess"], measured["megabytes"], measured["steps"]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.8))
    copies = measured["copies"]
    sizes = [mb[c] for c in copies]
    for mode, marker in (("memory", "o"), ("stream", "s")):
        left.plot(sizes, [pre[mode][c]["seconds"] for c in copies], marker=marker, label=mode)
        middle.plot(sizes, [pre[mode][c]["peak_rss_mib"] for c in copies], marker=marker, label=mode)
    left.set(xlabel="corpus (MB)", ylabel="preprocessing (s)", title="time")
    middle.set(xlabel="corpus (MB)", ylabel="peak RSS (MiB)", title="memory")
    right.plot(LENGTHS, [steps[n]["seconds_per_step"] * 1000 for n in LENGTHS], marker="o")
    right.set(xlabel="max_length", ylabel="ms per step", title="training step (batch 8)")
    for axis in (left, middle):
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run(quick: bool) -> list[Result]:
    source = shakespeare_file()
    root = data_dir()
    if source is None or root is None or not (root / "tokenizers" / "gpt2" / "vocab.json").is_file():
        return [skipped("cost as the work grows", "no tinyshakespeare or GPT-2 tokenizer under LLMKIT_DATA_DIR")]
    with tempfile.TemporaryDirectory() as folder:
        measured = measure_all(quick, Path(folder), source)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(measured, RESULTS / "scaling.png")
    return results_of(measured)


def child(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=("preprocess", "steps"))
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--streaming", type=int, default=0)
    parser.add_argument("--max_length", type=int, default=BLOCK)
    parser.add_argument("--steps", type=int, default=3)
    options = parser.parse_args(argv)
    from benchmarks.run import configure

    configure(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if options.child == "preprocess":
        found = child_preprocess(options.corpus, options.folder, bool(options.streaming))
    else:
        found = child_steps(options.corpus, options.folder, options.max_length, options.steps)
    print(json.dumps(found), flush=True)


def main() -> None:
    import argparse

    if "--child" in sys.argv:
        child(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="×1, ×4, ×16 (no ×64); 3 timed steps per length, not 5")
    quick = parser.parse_args().quick
    from benchmarks.run import configure, save_standalone

    configure(1)
    save_standalone("scaling", run(quick), "cost as the work grows (tiny-shakespeare copies)", ("scaling_",))


if __name__ == "__main__":
    main()
