"""Run llmkit's benchmarks, print the table, write benchmarks/results/*.json.

    python benchmarks/run.py --quick      # `make bench`: under 5 minutes on 2 CPU cores
    python benchmarks/run.py              # full: bigger models, more steps and repetitions
    python benchmarks/run.py --only startup,generation
    python benchmarks/run.py --update-doc # copy the last results' table into BENCHMARKS.md

Every ratio is llmkit ÷ baseline, both measured in this run, interleaved. What the libraries print while a
benchmark runs goes to benchmarks/results/<name>.log, so the console shows only progress and the table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS = (
    "startup",
    "train_throughput",
    "packing",
    "padding_free",
    "preprocess",
    "scaling",
    "generation",
    "qa_postprocess",
    "gpu",
)
SUMMARY_KEYS = (
    "train_throughput_ratio",
    "packing_useful_fraction",
    "packing_speedup",
    "padding_free_speedup",
    "padding_free_vs_group_by_length",
    "padding_free_max_logit_diff",
    "preprocess_ratio",
    "cache_speedup",
    "scaling_preprocess_linearity",
    "scaling_stream_rss_ratio",
    "help_seconds",
    "help_ratio",
    "generation_batched_speedup",
)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="llmkit benchmarks: llmkit vs plain baselines, side by side.")
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repetitions (under 5 minutes on 2 cores)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads per process (default 1: on a shared machine, more threads turn other "
        "people's work into OpenMP barrier waits and the timings into noise)",
    )
    parser.add_argument("--verbose", action="store_true", help="show what the libraries print instead of logging it")
    parser.add_argument(
        "--update-doc", action="store_true", help="measure nothing: put the last results' table into BENCHMARKS.md"
    )
    return parser.parse_args()


def configure(threads: int) -> None:
    """Offline, quiet, and the same thread count here and in every child process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def captured(log: Path, verbose: bool) -> Iterator[None]:
    """Send file descriptors 1 and 2 (progress bars, load reports, warnings) to `log` for the duration."""
    if verbose:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("ab") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_one(name: str, quick: bool, verbose: bool) -> tuple[list[Any], float]:
    from benchmarks.common import Result

    log = RESULTS / f"{name}.log"
    log.write_text("", encoding="utf-8")
    start = time.perf_counter()
    with captured(log, verbose):
        try:
            results = importlib.import_module(f"benchmarks.{name}").run(quick)
        except Exception as err:
            traceback.print_exc()
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            results = [Result(name, None, note=f"error: {first} (see benchmarks/results/{name}.log)")]
    return results, time.perf_counter() - start


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}" if unit == "frac" else f"{value:.3g}"
    return f"{text} {unit}".strip()


def rows(results: list[Any]) -> list[list[str]]:
    table = []
    for r in results:
        ok = {True: "yes", False: "NO", None: ""}[r.passed]
        score = ""
        if r.score is not None and (r.baseline is not None or r.goal):
            score = f"{r.score:.4g}"
        table.append([r.name, number(r.llmkit, r.unit), number(r.baseline, r.unit), score, r.goal or "", ok, r.note])
    return table


HEADER = ["benchmark", "llmkit", "baseline", "ratio / value", "goal", "met", "notes"]


def print_table(results: list[Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in HEADER:
        table.add_column(column, justify="right" if column in ("llmkit", "baseline", "ratio / value") else "left")
    for row in rows(results):
        table.add_row(*row, style="red" if row[5] == "NO" else None)
    Console(width=200).print(table)


def markdown(results: list[Any]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows(results):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def write_doc() -> None:
    """Put the last run's table (from results/*.json and summary.json) between the markers in BENCHMARKS.md."""
    from benchmarks.common import Result

    summary = json.loads((RESULTS / "summary.json").read_text(encoding="utf-8"))
    results = [
        Result(**{k: v for k, v in row.items() if k != "passed"})
        for name in BENCHMARKS
        if (RESULTS / f"{name}.json").is_file()
        for row in json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    ]
    table = markdown(results)
    (RESULTS / "table.md").write_text(table, encoding="utf-8")
    path = REPO / "BENCHMARKS.md"
    text = path.read_text(encoding="utf-8")
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in text or end not in text:
        raise SystemExit("BENCHMARKS.md has no <!-- bench:start --> / <!-- bench:end --> markers")
    machine = summary["machine"]
    head = (
        f"Measured {summary['finished']} with `{summary['command']}` ({summary['seconds']:.0f} s) on "
        f"{machine['cpu']}, {machine['cores']} cores, device `{machine['device']}`; torch {machine['torch']}, "
        f"transformers {machine['transformers']}; {machine['torch_threads']} torch thread(s) per process; "
        f"load average {machine['load_average'][0]:.1f} when it started.\n\n"
    )
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    path.write_text(f"{before}{start}\n{head}{table}{end}{after}", encoding="utf-8")


def save_standalone(name: str, results: list[Any], title: str, prefixes: tuple[str, ...]) -> None:
    """A benchmark run on its own (`python -m benchmarks.NAME`): its results file, its keys in summary.json
    (replacing its earlier ones, keeping every other benchmark's), and its table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(
        json.dumps([r.as_dict() for r in results], indent=2, default=str) + "\n", encoding="utf-8"
    )
    path = RESULTS / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    goals = summary.setdefault("goals", {})
    for stale in [key for key in summary if key.startswith(prefixes)]:
        summary.pop(stale)
        goals.pop(stale, None)
    for result in results:
        if result.key:
            summary[result.key] = result.score
            goals[result.key] = {"goal": result.goal, "met": result.passed, "note": result.note}
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    print_table(results, title)


def main() -> None:
    options = parse()
    sys.path.insert(0, str(REPO))
    if options.update_doc:
        write_doc()
        return
    configure(options.threads)
    from benchmarks.common import machine

    RESULTS.mkdir(parents=True, exist_ok=True)
    chosen = [name for name in options.only.split(",") if name] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    facts: dict[str, Any] = {"machine": machine(), "mode": "quick" if options.quick else "full"}
    facts["command"] = "python benchmarks/run.py" + (" --quick" if options.quick else "")
    started = time.perf_counter()
    everything = []
    for name in chosen:
        print(f"· {name} …", end="", flush=True)
        results, seconds = run_one(name, options.quick, options.verbose)
        everything += results
        flags = "".join({True: "✓", False: "✗", None: "·"}[r.passed] for r in results)
        print(f" {seconds:.0f} s {flags}", flush=True)
        (RESULTS / f"{name}.json").write_text(
            json.dumps([r.as_dict() for r in results], indent=2, default=str) + "\n", encoding="utf-8"
        )
    facts["seconds"] = time.perf_counter() - started
    facts["finished"] = time.strftime("%Y-%m-%d %H:%M")
    summary: dict[str, Any] = {key: None for key in SUMMARY_KEYS}
    goals = {}
    for r in everything:
        if r.key:
            summary[r.key] = r.score
            goals[r.key] = {"goal": r.goal, "met": r.passed, "note": r.note}
    summary["device"] = facts["machine"]["device"]
    summary.update({key: facts[key] for key in ("mode", "command", "finished", "machine")})
    summary["seconds"] = round(facts["seconds"], 1)
    summary["goals"] = goals
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    table = markdown(everything)
    (RESULTS / "table.md").write_text(table, encoding="utf-8")
    title = f"llmkit vs baselines ({facts['mode']}, {facts['machine']['device']}, {facts['seconds']:.0f} s)"
    print_table(everything, title)
    print(f"results: {RESULTS.relative_to(REPO)}/summary.json, table.md, <benchmark>.json and .log")


if __name__ == "__main__":
    main()
