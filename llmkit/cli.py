"""The `llmkit` command line: thin commands over `llmkit.pipeline`.

Heavy libraries (torch, transformers, datasets) are imported inside command bodies so `llmkit --help`
starts instantly. User errors print one line and exit 2 (`LLMKIT_DEBUG=1` shows the traceback).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from llmkit.errors import LlmkitError

app = typer.Typer(
    name="llmkit",
    help="Pretrain and fine-tune GPT-2/BERT-family models from a recipe YAML.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: Typer's rich help formatter imports rich + markdown-it, ~2x the start-up time of `--help`.
    rich_markup_mode=None,
)


def show_version(value: bool) -> None:
    if value:
        from llmkit import __version__

        typer.echo(f"llmkit {__version__}")
        raise typer.Exit()


@app.callback()
def options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the libraries' own output (warnings, load reports, bars).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Pretrain and fine-tune GPT-2/BERT-family models from a recipe YAML."""
    if verbose:
        os.environ["LLMKIT_VERBOSE"] = "1"  # inherited by processes that --num-processes starts


RecipeArg = Annotated[
    str, typer.Argument(help="Recipe YAML file, or the name of a shipped recipe (see `llmkit recipes`).")
]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="Recipe overrides as dotted key=value, e.g. training.learning_rate=1e-4.")
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output folder.")]
ResumeOpt = Annotated[
    str | None,
    typer.Option(
        "--resume",
        help="Continue from the output folder's latest checkpoint (`--resume latest`) or from a checkpoint folder.",
    ),
]

# Launch options: accelerate's, named and counted as `accelerate launch` names and counts them.
ProcessesOpt = Annotated[
    int | None,
    typer.Option(
        "--num-processes",
        help="Processes in all, over all machines (as `accelerate launch` counts them). More than one re-launches "
        "this command through accelerate's launcher: one process per GPU, or on the CPU where there is no GPU.",
    ),
]
CpuOpt = Annotated[bool, typer.Option("--cpu", help="Run every process on the CPU (gloo backend), even beside GPUs.")]
MachinesOpt = Annotated[
    int | None,
    typer.Option("--num-machines", help="Machines taking part: start the same command on each (README: Scaling out)."),
]
MachineRankOpt = Annotated[
    int | None, typer.Option("--machine-rank", help="This machine's number: 0 on the main one, to --num-machines - 1.")
]
MainProcessIpOpt = Annotated[
    str | None, typer.Option("--main-process-ip", help="Address of machine rank 0, where all processes meet.")
]
MainProcessPortOpt = Annotated[
    int | None,
    typer.Option("--main-process-port", help="Port on machine rank 0 (default: a free one; 29500 with many machines)."),
]
AccelerateConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--accelerate-config",
        help="An `accelerate config` file (machines, FSDP, DeepSpeed ...); the options above take precedence.",
    ),
]

F = TypeVar("F", bound=Callable[..., Any])


class Terminated(BaseException):
    """SIGTERM outside training (inside it, training stops at a step boundary and saves a checkpoint)."""


def reports_errors(command: F) -> F:
    """Turn LlmkitError into one line on stderr and its exit code; tracebacks only with LLMKIT_DEBUG=1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LlmkitError as err:
            if os.environ.get("LLMKIT_DEBUG"):
                raise
            typer.echo(f"{getattr(err, 'label', 'error')}: {err}", err=True)
            raise typer.Exit(err.exit_code) from None
        except (KeyboardInterrupt, Terminated) as stop:  # outside training, or a second Ctrl-C
            if os.environ.get("LLMKIT_DEBUG"):
                raise
            ctrl_c = isinstance(stop, KeyboardInterrupt)
            if is_main_process():
                typer.echo(f"stopped: {'interrupted (Ctrl-C)' if ctrl_c else 'terminated (SIGTERM)'}", err=True)
            raise typer.Exit(130 if ctrl_c else 143) from None

    return wrapper  # type: ignore[return-value]


def recipes_root() -> Path:
    """Shipped recipes: inside the installed package, or the repository's `recipes/` in a checkout."""
    packaged = Path(__file__).parent / "recipes"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "recipes"


def resolve_recipe(name: str) -> Path:
    """A path as given, or a shipped recipe by name (`ci/tiny-gpt2-clm`)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    shipped = recipes_root() / f"{name}.yaml"
    return shipped if shipped.is_file() else path


def load(recipe: str, overrides: list[str] | None) -> Any:
    from llmkit.recipe import load_recipe

    return load_recipe(resolve_recipe(recipe), overrides or [])


def print_metrics(metrics: dict[str, Any], title: str, compare: dict[str, Any] | None = None) -> None:
    """A metric table; with `compare`, a second column (the training run's own eval, say) beside it."""
    from rich.table import Table

    from llmkit.console import rich_console

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    if compare:
        table.add_column("training run's eval", justify="right")
    for key, value in metrics.items():
        if key != "epoch" and not key.endswith(("_preparation_time", "_runtime", "_per_second")):  # bookkeeping
            cells = [f"{value:.4f}" if isinstance(value, float) else str(value)]
            if compare:
                other = compare.get(key)
                cells.append(f"{other:.4f}" if isinstance(other, float) else "" if other is None else str(other))
            table.add_row(key, *cells)
    rich_console().print(table)


def run_training(
    recipe_name: str,
    overrides: list[str] | None,
    overwrite: bool,
    resume: str | None,
    command: str,
    launch_options: Any = None,
) -> None:
    from llmkit import launch
    from llmkit.tasks import TASKS

    tasks = {name for name, task in TASKS.items() if command in task.commands}

    options = launch_options or launch.LaunchOptions()
    try:
        recipe = load(recipe_name, overrides)
        if recipe.task not in tasks:
            allowed = ", ".join(sorted(tasks))
            raise LlmkitError(
                f"recipe field `task`: `{recipe.task}` is not for this command (`llmkit {command}` runs: {allowed})"
            )
        if launch.needs_relaunch(options):
            # The workers run this very command line; having a rank, they do not launch again.
            raise typer.Exit(launch.relaunch(options, sys.argv[1:]))
        train_here(recipe, overwrite, resume)
    except LlmkitError as err:  # in a launched worker: said once, by the launching process or rank 0
        if launch.report_from_worker(f"{getattr(err, 'label', 'error')}: {err}", err.exit_code):
            raise typer.Exit(err.exit_code) from None
        raise
    finally:
        launch.leave_process_group()


def train_here(recipe: Any, overwrite: bool, resume: str | None) -> None:
    """Train in this process (the only one, or one of a launched group)."""
    from llmkit import pipeline
    from llmkit.errors import Interrupted

    resume_from: str | bool | None = True if resume == "latest" else resume
    try:
        metrics = pipeline.train(recipe, overwrite=overwrite, resume=resume_from, command=command_line())
    except Interrupted as stop:
        if not is_main_process():
            raise typer.Exit(stop.exit_code) from None  # rank 0 says it once
        if stop.resumable:
            stop.args = (f"{stop}; to continue: {resume_command()}",)
        raise
    if is_main_process():
        shown = {k: v for k, v in metrics.items() if k.startswith("eval_") or k in ("perplexity", "train_loss")}
        print_metrics(shown, f"{recipe.task} → {recipe.training.output_dir}")


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def command_line() -> str | None:
    """The command as the user typed it (for the model card); None when llmkit runs inside another program."""
    import shlex

    program = Path(sys.argv[0]).name if sys.argv else ""
    return shlex.join(["llmkit", *sys.argv[1:]]) if program in ("llmkit", "__main__.py") else None


def resume_command() -> str:
    """This command line again, with `--resume latest` instead of --overwrite/--resume (a worker of
    `--num-processes` runs the user's own command line; under a bare `accelerate launch` the launch
    options that would start the same processes are added)."""
    from llmkit.launch import launch_options_in_effect

    kept: list[str] = []
    arguments = iter(sys.argv[1:])
    for item in arguments:
        if item == "--resume":
            next(arguments, None)
        elif item != "--overwrite" and not item.startswith("--resume="):
            kept.append(item)
    launched = any(item == "--num-processes" or item.startswith("--num-processes=") for item in kept)
    launch = [] if launched else launch_options_in_effect()
    return " ".join(["llmkit", *kept, *launch, "--resume", "latest"])


@app.command()
@reports_errors
def pretrain(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = None,
    num_processes: ProcessesOpt = None,
    cpu: CpuOpt = False,
    num_machines: MachinesOpt = None,
    machine_rank: MachineRankOpt = None,
    main_process_ip: MainProcessIpOpt = None,
    main_process_port: MainProcessPortOpt = None,
    accelerate_config: AccelerateConfigOpt = None,
) -> None:
    """Pretrain (from scratch or continued) with a causal-LM or masked-LM objective.

    Example: llmkit pretrain recipes/ci/tiny-gpt2-clm.yaml training.max_steps=200
    """
    from llmkit.launch import LaunchOptions

    launching = LaunchOptions(
        num_processes, num_machines, machine_rank, main_process_ip, main_process_port, accelerate_config, cpu
    )
    run_training(recipe, overrides, overwrite, resume, "pretrain", launching)


@app.command()
@reports_errors
def finetune(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = None,
    num_processes: ProcessesOpt = None,
    cpu: CpuOpt = False,
    num_machines: MachinesOpt = None,
    machine_rank: MachineRankOpt = None,
    main_process_ip: MainProcessIpOpt = None,
    main_process_port: MainProcessPortOpt = None,
    accelerate_config: AccelerateConfigOpt = None,
) -> None:
    """Fine-tune for classification, summarization or question answering (or clm/mlm domain tuning).

    Example: llmkit finetune recipes/bert-sst2.yaml training.num_train_epochs=1
    """
    from llmkit.launch import LaunchOptions

    launching = LaunchOptions(
        num_processes, num_machines, machine_rank, main_process_ip, main_process_port, accelerate_config, cpu
    )
    run_training(recipe, overrides, overwrite, resume, "finetune", launching)


@app.command("eval")
@reports_errors
def evaluate(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Run folder to evaluate (default: the recipe's output_dir).")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when a metric misses the recipe's `expect:` bar.")
    ] = False,
) -> None:
    """Evaluate a trained run on the recipe's eval data; print a table and write metrics.json.

    Example: llmkit eval recipes/ci/tiny-gpt2-clm.yaml --check
    """
    from llmkit import pipeline
    from llmkit.errors import ExpectationsNotMet
    from llmkit.recipe import meets

    loaded = load(recipe, overrides)
    metrics, written = pipeline.evaluate(loaded, checkpoint)
    evaluated = Path(checkpoint or loaded.training.output_dir)
    trained = training_metrics(evaluated)
    data = loaded.data.eval or f"{loaded.data.validation_split:g} of {loaded.data.train}, held out"
    print_metrics(metrics, f"eval of {evaluated} on {data}", compare=trained)
    if written is not None:
        typer.echo(f"metrics written to {written / 'metrics.json'}")
    else:
        typer.echo(f"note: {evaluated} was not written by llmkit; the metrics were not saved there")
    if check:
        missed = []
        for name, bar in loaded.expect.items():
            if name not in metrics:
                raise LlmkitError(f"recipe field `expect.{name}`: no such metric (metrics: {', '.join(metrics)})")
            if not meets(float(metrics[name]), bar):
                missed.append(f"{name} = {metrics[name]:.4g} (expected {bar})")
        if missed:
            raise ExpectationsNotMet("expectations not met: " + "; ".join(missed))
        typer.echo(f"all {len(loaded.expect)} expectations met")


def training_metrics(folder: Path) -> dict[str, Any] | None:
    """The eval figures the training run wrote, to compare with a new evaluation."""
    import json

    try:
        content = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


@app.command()
@reports_errors
def check(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Validate a recipe and its data without training: examples, token lengths, planned steps.

    Example: llmkit check recipes/ci/tiny-bert-mlm.yaml
    """
    from llmkit.check import report

    report(load(recipe, overrides))


@app.command()
@reports_errors
def recipes(
    name: Annotated[str | None, typer.Argument(help="Print this recipe instead of listing them.")] = None,
) -> None:
    """List the shipped recipes, or print one.

    Example: llmkit recipes ci/tiny-gpt2-clm
    """
    root = recipes_root()
    if name is not None:
        path = root / f"{name.removesuffix('.yaml')}.yaml"
        if not path.is_file():
            raise LlmkitError(f"no shipped recipe `{name}` (see `llmkit recipes`)")
        typer.echo(path.read_text(encoding="utf-8"), nl=False)
        return
    from llmkit.recipe import resolve_extends

    # Plain lines, not a table: names and descriptions stay whole on an 80-column terminal and in a pipe.
    typer.echo(f"recipes in {root} (run one with `llmkit finetune NAME` or `llmkit pretrain NAME`):")
    for path in sorted(root.rglob("*.yaml")):
        content = resolve_extends(path)
        model = content.get("model", {}) or {}
        source = model.get("name_or_path") or f"{(model.get('from_config') or {}).get('model_type', '?')} from config"
        typer.echo(f"\n{path.relative_to(root).with_suffix('')}  [{content.get('task', '?')}, {source}]")
        typer.echo(f"    {description(path)}")


PREDICT_HELP = """Run a trained model on new inputs: label, summary, answer, continuation or mask fills.

Each input is a row of the task's fields ({fields}); a file in the training data's own column names works
as is, and every other field of a row is kept in its result. Results are JSON lines.

Example: llmkit predict runs/bert-sst2 --file reviews.csv --output predictions.jsonl
"""


def predict_help() -> str:
    from llmkit.predict import fields_help

    return PREDICT_HELP.format(fields=fields_help())


@app.command(help=predict_help())
@reports_errors
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by pretrain/finetune.")],
    text: Annotated[list[str] | None, typer.Option("--text", help="Input text (repeatable).")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Inputs: .csv/.tsv (with a header), .jsonl, .json, .txt (one per line), or -."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write the results here (JSON lines) instead of stdout.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output file.")] = False,
) -> None:
    from llmkit.predict import predict_rows, read_inputs, write

    if output is not None and output.exists() and not overwrite:
        raise LlmkitError(f"--output {output} exists: pass --overwrite to replace it, or choose another file")
    if output is not None and output.is_dir():
        raise LlmkitError(f"--output {output} is a folder; give a file name")
    rows = read_inputs(run_dir, text or [], file)
    records = predict_rows(run_dir, rows)
    write(records, output)
    if output is not None:
        typer.echo(f"{len(records)} result(s) written to {output}", err=True)


@app.command()
@reports_errors
def merge(
    adapter_dir: Annotated[Path, typer.Argument(help="A LoRA run folder (it holds adapter_config.json).")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write the merged, plain model folder.")],
    overwrite: OverwriteOpt = False,
) -> None:
    """Merge a LoRA adapter into its base model: a plain model folder (weights, tokenizer, recipe).

    Example: llmkit merge runs/gpt2-sst2-lora runs/gpt2-sst2-merged
    """
    from llmkit.pipeline import merge_adapter

    merge_adapter(adapter_dir, out_dir, overwrite)
    typer.echo(f"merged model written to {out_dir}")


@app.command()
@reports_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by pretrain/finetune (LoRA runs are merged).")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write the exported model, tokenizer and export.json.")],
    fmt: Annotated[str, typer.Option("--format", help="Export format.")] = "onnx",
    quantize: Annotated[
        str | None, typer.Option("--quantize", help="Also write a dynamically quantized model: int8.")
    ] = None,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="Largest abs difference from PyTorch's outputs that passes.")
    ] = 1e-4,
    samples: Annotated[int, typer.Option("--samples", help="Eval rows the parity check runs on.")] = 200,
    overwrite: OverwriteOpt = False,
) -> None:
    """Export a trained run to ONNX, then prove parity with PyTorch on the run's eval data (exit 1 if not).

    Example: llmkit export runs/bert-sst2 runs/bert-sst2-onnx --format onnx --quantize int8
    """
    from llmkit.export import export as export_run

    report = export_run(run_dir, out_dir, fmt, quantize, overwrite, tolerance, samples)
    parity = report["parity"]
    typer.echo(
        f"parity on {parity['examples']} eval example(s): max abs difference {parity['max_abs_diff']:.3g} "
        f"(tolerance {parity['tolerance']:g}), argmax agreement {parity['argmax_agreement']:.2%}"
    )
    if "int8" in report:
        typer.echo(f"int8: argmax agreement {report['int8']['argmax_agreement']:.2%}")
    for size in (1, 32):
        row = report["latency_ms"][f"batch_{size}"]
        int8 = f", int8 {row['onnxruntime_int8']} ms" if "onnxruntime_int8" in row else ""
        typer.echo(f"latency batch {size}: PyTorch {row['pytorch']} ms, ONNX Runtime {row['onnxruntime']} ms{int8}")
    typer.echo(f"ONNX model written to {out_dir} (llmkit predict {out_dir} --text ...)")


@app.command()
@reports_errors
def tune(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    trials: Annotated[int, typer.Option("--trials", help="Trials in all (a continued study counts its own).")] = 10,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop starting new trials after this many minutes.")
    ] = None,
    num_processes: ProcessesOpt = None,
    cpu: CpuOpt = False,
) -> None:
    """Search the recipe's `tune.space` with Optuna (TPE, median pruning); the study is kept in SQLite.

    Example: llmkit tune recipes/ci/tiny-tune.yaml --trials 8
    """
    from llmkit import tune as tuning
    from llmkit.launch import LaunchOptions

    outcome = tuning.run(load(recipe, overrides), trials, timeout, LaunchOptions(num_processes, cpu=cpu))
    typer.echo(
        f"{outcome.completed} trial(s) complete, {outcome.pruned} pruned, {outcome.failed} failed "
        f"in {outcome.seconds:.1f} s; study and trials in {outcome.folder}"
    )


def description(path: Path) -> str:
    """A recipe's first sentence from its leading comment."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#") or not line.strip("# "):
            break
        lines.append(line.lstrip("# ").strip())
        if line.endswith(":"):  # what follows is an example, not the description
            lines[-1] = lines[-1].removesuffix(":") + "."
            break
    text = " ".join(lines)
    end = text.find(". ")
    return text[: end + 1] if end >= 0 else text


def main() -> None:
    """SIGTERM becomes an exception so that it ends a command like Ctrl-C does: one line, exit 143."""
    import signal

    def terminated(number: int, frame: Any) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, terminated)
    app()


if __name__ == "__main__":
    sys.exit(main())
