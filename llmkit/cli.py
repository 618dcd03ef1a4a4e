"""The `llmkit` command line: each command parses its arguments and makes one library call.

The library loads inside the command bodies, so `llmkit --help` starts instantly: torch, transformers and
datasets would take seconds, and even llmkit's own run modules with the recipe schema and YAML add ~0.3 s
(40%, measured with -X importtime). User errors print one line and exit 2 (`LLMKIT_DEBUG=1` shows the
traceback).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from llmkit import __version__
from llmkit.cli_helpers import (
    AccelerateConfigOpt,
    CpuOpt,
    MachineRankOpt,
    MachinesOpt,
    MainProcessIpOpt,
    MainProcessPortOpt,
    OverridesArg,
    OverwriteOpt,
    ProcessesOpt,
    RecipeArg,
    ResumeOpt,
    Terminated,
    load,
    predict_fields,
    reports_errors,
    show_evaluation,
    show_export,
    show_recipes,
    train_command,
    training_help,
)

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


@app.command(help=training_help("pretrain", "Pretrain a model (from scratch or continued) on text."))
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
    from llmkit.launch import LaunchOptions

    launching = LaunchOptions(
        num_processes, num_machines, machine_rank, main_process_ip, main_process_port, accelerate_config, cpu
    )
    train_command(recipe, overrides, overwrite, resume, "pretrain", launching)


@app.command(help=training_help("finetune", "Fine-tune a pretrained model for a task."))
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
    from llmkit.launch import LaunchOptions

    launching = LaunchOptions(
        num_processes, num_machines, machine_rank, main_process_ip, main_process_port, accelerate_config, cpu
    )
    train_command(recipe, overrides, overwrite, resume, "finetune", launching)


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

    Example: llmkit eval recipe.yaml --check
    """
    from llmkit import run

    loaded = load(recipe, overrides)
    metrics, written = run.evaluate(loaded, checkpoint)
    show_evaluation(loaded, checkpoint, metrics, written)
    if check:
        typer.echo(f"all {run.check_expectations(loaded, metrics)} expectations met")


@app.command()
@reports_errors
def check(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Validate a recipe and its data without training: examples, token lengths, planned steps.

    Example: llmkit check recipe.yaml
    """
    from llmkit.check import report

    report(load(recipe, overrides))


@app.command()
@reports_errors
def recipes(
    name: Annotated[str | None, typer.Argument(help="Print this recipe instead of listing them.")] = None,
) -> None:
    """List the shipped recipes, or print one.

    Example: llmkit recipes ci/NAME
    """
    show_recipes(name)


PREDICT_HELP = """Run a trained model on new inputs, with the task that trained it.

Each input is a row of the task's fields ({fields}); a file in the training data's own column names works
as is, and every other field of a row is kept in its result. Results are JSON lines.

Example: llmkit predict runs/my-run --file inputs.csv --output predictions.jsonl
"""


@app.command(help=PREDICT_HELP.format(fields=predict_fields()))
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
    from llmkit.predict import predict as predict_inputs

    written = predict_inputs(run_dir, text or [], file, output, overwrite)
    if output is not None:
        typer.echo(f"{written} result(s) written to {output}", err=True)


@app.command()
@reports_errors
def merge(
    adapter_dir: Annotated[Path, typer.Argument(help="A LoRA run folder (written by finetune with `peft:`).")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write the merged, plain model folder.")],
    overwrite: OverwriteOpt = False,
) -> None:
    """Merge a LoRA adapter into its base model: a plain model folder (weights, tokenizer, recipe).

    Example: llmkit merge runs/my-lora-run runs/my-merged-run
    """
    from llmkit.merge import merge as merge_adapter

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

    Example: llmkit export runs/my-run runs/my-run-onnx --format onnx --quantize int8
    """
    from llmkit.export import export as export_run

    show_export(export_run(run_dir, out_dir, fmt, quantize, overwrite, tolerance, samples), out_dir)


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

    Example: llmkit tune recipe.yaml --trials 8
    """
    from llmkit import tune as tuning
    from llmkit.launch import LaunchOptions

    outcome = tuning.run(load(recipe, overrides), trials, timeout, LaunchOptions(num_processes, cpu=cpu))
    typer.echo(
        f"{outcome.completed} trial(s) complete, {outcome.pruned} pruned, {outcome.failed} failed "
        f"in {outcome.seconds:.1f} s; study and trials in {outcome.folder}"
    )


def main() -> None:
    """SIGTERM becomes an exception so that it ends a command like Ctrl-C does: one line, exit 143."""
    import signal

    def terminated(number: int, frame: Any) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, terminated)
    app()


if __name__ == "__main__":
    sys.exit(main())
