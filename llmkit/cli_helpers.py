"""What the commands of `llmkit.cli` share: option aliases, the one-line error formatter, recipe lookup, the
training command's launch handling, and the help texts, tables and lines they print.

Light at import time, like `llmkit.cli`: the recipe schema, YAML and the run's own modules load inside the
functions that use them (at the top they add ~0.3 s, 40%, to `llmkit --help`, measured with -X importtime).
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from llmkit.errors import Interrupted, LlmkitError
from llmkit.run_folder import METRICS_FILE, is_main_process, read_metrics
from llmkit.tasks import TASKS

if TYPE_CHECKING:
    from llmkit.launch import LaunchOptions
    from llmkit.recipe import Recipe

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


def predict_fields() -> str:
    """The input fields of each task, for `llmkit predict --help`."""
    listed = []
    for task in TASKS.values():
        needed = [role for role in task.roles if role not in task.target_roles]
        optional = [f"[{role}]" for role in task.optional_roles if role not in task.target_roles]
        listed.append(f"{task.name}: {' '.join([*needed, *optional])}")
    return "; ".join(listed)


def training_help(command: str, what: str) -> str:
    """A training command's help, naming the tasks it runs as the task registry says."""
    tasks = ", ".join(sorted(name for name, task in TASKS.items() if command in task.commands))
    return f"{what} Tasks: {tasks}.\n\nExample: llmkit {command} recipe.yaml training.max_steps=200"


# --------------------------------------------------------------------------- recipes


def recipes_root() -> Path:
    """Shipped recipes: inside the installed package, or the repository's `recipes/` in a checkout."""
    packaged = Path(__file__).parent / "recipes"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "recipes"


def resolve_recipe(name: str) -> Path:
    """A path as given, or a shipped recipe by name (`ci/NAME`, as `llmkit recipes` lists them)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    shipped = recipes_root() / f"{name}.yaml"
    return shipped if shipped.is_file() else path


def load(recipe: str, overrides: list[str] | None) -> Recipe:
    from llmkit.recipe import load_recipe

    return load_recipe(resolve_recipe(recipe), overrides or [])


def show_recipes(name: str | None) -> None:
    """`llmkit recipes`: one shipped recipe's text, or the list of them as plain lines (names and descriptions
    stay whole on an 80-column terminal and in a pipe)."""
    root = recipes_root()
    if name is not None:
        path = root / f"{name.removesuffix('.yaml')}.yaml"
        if not path.is_file():
            raise LlmkitError(f"no shipped recipe `{name}` (see `llmkit recipes`)")
        typer.echo(path.read_text(encoding="utf-8"), nl=False)
        return
    from llmkit.recipe import resolve_extends

    typer.echo(f"recipes in {root} (run one with `llmkit finetune NAME` or `llmkit pretrain NAME`):")
    for path in sorted(root.rglob("*.yaml")):
        content = resolve_extends(path)
        model = content.get("model", {}) or {}
        source = model.get("name_or_path") or f"{(model.get('from_config') or {}).get('model_type', '?')} from config"
        typer.echo(f"\n{path.relative_to(root).with_suffix('')}  [{content.get('task', '?')}, {source}]")
        typer.echo(f"    {description(path)}")


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


# --------------------------------------------------------------------------- training


def train_command(
    recipe_name: str,
    overrides: list[str] | None,
    overwrite: bool,
    resume: str | None,
    command: str,
    options: LaunchOptions,
) -> None:
    """`pretrain`/`finetune`: check the task fits the command, re-launch over many processes when asked, else
    train here; a user error in a launched worker is said once."""
    from llmkit import launch

    tasks = {name for name, task in TASKS.items() if command in task.commands}
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


def train_here(recipe: Recipe, overwrite: bool, resume: str | None) -> None:
    """Train in this process (the only one, or one of a launched group)."""
    from llmkit import run

    resume_from: str | bool | None = True if resume == "latest" else resume
    try:
        metrics = run.train(recipe, overwrite=overwrite, resume=resume_from, command=command_line())
    except Interrupted as stop:
        if not is_main_process():
            raise typer.Exit(stop.exit_code) from None  # rank 0 says it once
        if stop.resumable:
            stop.args = (f"{stop}; to continue: {resume_command()}",)
        raise
    if is_main_process():
        shown = {k: v for k, v in metrics.items() if k.startswith("eval_") or k in ("perplexity", "train_loss")}
        print_metrics(shown, f"{recipe.task} → {recipe.training.output_dir}")


def command_line() -> str | None:
    """The command as the user typed it (for the model card); None when llmkit runs inside another program."""
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
    extra = [] if launched else launch_options_in_effect()
    return " ".join(["llmkit", *kept, *extra, "--resume", "latest"])


# --------------------------------------------------------------------------- what commands print


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


def show_evaluation(recipe: Recipe, checkpoint: Path | None, metrics: dict[str, Any], written: Path | None) -> None:
    """The evaluation beside the training run's own, and where it was written."""
    evaluated = Path(checkpoint or recipe.training.output_dir)
    data = recipe.data.eval or f"{recipe.data.validation_split:g} of {recipe.data.train}, held out"
    print_metrics(metrics, f"eval of {evaluated} on {data}", compare=read_metrics(evaluated))
    if written is not None:
        typer.echo(f"metrics written to {written / METRICS_FILE}")
    else:
        typer.echo(f"note: {evaluated} was not written by llmkit; the metrics were not saved there")


def show_export(report: dict[str, Any], out_dir: Path) -> None:
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
