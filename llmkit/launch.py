"""Many processes, many machines: the same command again under accelerate's launcher, and what the run became.

`llmkit finetune R --num-processes N` re-runs its own command line under `accelerate launch` (torch elastic
underneath); the options are accelerate's and are counted as accelerate counts them: `--num-processes` is
the total over all machines, `--num-machines`, `--machine-rank`, `--main-process-ip/-port` place this
machine among them, `--accelerate-config` is an `accelerate config` file. `accelerate launch -m llmkit ...`
works as well: a process that already has a rank never re-launches.

On CPU, `accelerate launch --cpu --num_processes N` starts a single process, so CPU runs use the multi-GPU
path with `ACCELERATE_USE_CPU=1`, which makes every process train on the CPU with the gloo backend.

A user error in a worker is said once: the workers write it to a folder the launching process reads, the
launcher's own report of a failed child (a `ChildFailedError` traceback) is left out, and the launching
process prints the first worker's line and exits with its code.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError

#: the folder where workers leave the user error that stopped them (set by `relaunch`)
ERRORS_ENV = "LLMKIT_LAUNCH_ERRORS"
#: accelerate's default rendezvous port, the one every machine of a run agrees on without being told
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class LaunchOptions:
    """The launch options of `pretrain`/`finetune`, as the user gave them (None: not given)."""

    num_processes: int | None = None
    num_machines: int | None = None
    machine_rank: int | None = None
    main_process_ip: str | None = None
    main_process_port: int | None = None
    accelerate_config: Path | None = None
    cpu: bool = False

    @property
    def machines(self) -> int:
        return self.num_machines or 1


def inside_launcher() -> bool:
    """True in a process started by accelerate/torchrun (it has a rank)."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ


def free_port() -> int:
    """A free TCP port for the rendezvous, so two runs on one machine do not collide on 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def check(options: LaunchOptions) -> None:
    """Reject launch options that cannot describe a run, before any process starts."""
    if options.num_processes is not None and options.num_processes < 1:
        raise LlmkitError(f"--num-processes must be at least 1 (got {options.num_processes})")
    if options.num_machines is not None and options.num_machines < 1:
        raise LlmkitError(f"--num-machines must be at least 1 (got {options.num_machines})")
    machines = options.machines
    if options.machine_rank is not None and not 0 <= options.machine_rank < machines:
        raise LlmkitError(f"--machine-rank must be from 0 to {machines - 1} (got {options.machine_rank})")
    if options.num_processes is not None and options.num_processes % machines:
        raise LlmkitError(
            f"--num-processes counts the processes of all machines, as accelerate does: {options.num_processes} "
            f"cannot be shared evenly by {machines} machines"
        )
    if machines > 1 and options.accelerate_config is None:
        if options.main_process_ip is None:
            raise LlmkitError(
                f"--num-machines {machines} needs --main-process-ip: the address of machine rank 0, the same on all"
            )
        if options.machine_rank is None:
            raise LlmkitError(
                f"--num-machines {machines} needs --machine-rank: 0 on the main machine, 1 to {machines - 1} on others"
            )
    if options.accelerate_config is not None and not options.accelerate_config.is_file():
        raise LlmkitError(f"--accelerate-config {options.accelerate_config}: no such file")


def needs_relaunch(options: LaunchOptions) -> bool:
    """Relaunch when more than one process or machine is asked for (or an accelerate config file is given)
    and this process is not already one of the launched ones."""
    check(options)
    if options.cpu:
        os.environ["ACCELERATE_USE_CPU"] = "1"
    if inside_launcher():
        return False
    many = (options.num_processes or 1) > 1 or options.machines > 1
    return many or options.accelerate_config is not None


def runs_on_cpu(options: LaunchOptions, processes_here: int) -> bool:
    """`--cpu`, or a machine without GPUs (said in one line); too few GPUs for the processes is an error."""
    if options.cpu:
        return True
    import torch

    if not torch.cuda.is_available():
        print(f"no GPU here: running {processes_here} processes on the CPU (gloo backend)", file=sys.stderr)
        return True
    if torch.cuda.device_count() < processes_here:
        raise LlmkitError(
            f"{processes_here} processes on this machine, but only {torch.cuda.device_count()} GPU(s) are visible "
            "(add --cpu to run them on the CPU)"
        )
    return False


def accelerate_arguments(options: LaunchOptions, cpu: bool) -> list[str]:
    """`accelerate launch` options for this machine: the user's, plus what a bare command line must say."""
    machines = options.machines
    arguments: list[str] = []
    if options.accelerate_config is not None:
        arguments += ["--config_file", str(options.accelerate_config)]
    else:
        arguments += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    processes = options.num_processes
    if processes is None and options.accelerate_config is None:
        processes = machines * (1 if cpu else local_gpus())
    if processes is not None:
        arguments += ["--num_processes", str(processes)]
    if options.num_machines is not None or options.accelerate_config is None:
        arguments += ["--num_machines", str(machines)]
    if options.machine_rank is not None:
        arguments += ["--machine_rank", str(options.machine_rank)]
    if options.main_process_ip is not None:
        arguments += ["--main_process_ip", options.main_process_ip]
    port = options.main_process_port
    if port is None and options.accelerate_config is None:
        # One machine: any free port (two runs side by side must not collide); many: all must agree.
        port = free_port() if machines == 1 else DEFAULT_PORT
    if port is not None:
        arguments += ["--main_process_port", str(port)]
    return arguments


def local_gpus() -> int:
    import torch

    return max(torch.cuda.device_count(), 1)


def accelerate_command(options: LaunchOptions, cpu: bool, arguments: list[str]) -> tuple[list[str], dict[str, str]]:
    """The launcher's command line (`python -m llmkit.launch ACCELERATE-OPTIONS -m llmkit ARGS`) and its
    environment: accelerate's `launch` itself, run by `main` below so that its ending stays quiet."""
    command = [sys.executable, "-m", "llmkit.launch", *accelerate_arguments(options, cpu), "-m", "llmkit", *arguments]
    environment = dict(os.environ)
    if cpu:
        environment["ACCELERATE_USE_CPU"] = "1"
        # One BLAS thread per process: N processes already share the cores.
        environment.setdefault("OMP_NUM_THREADS", "1")
    return command, environment


def relaunch(options: LaunchOptions, arguments: list[str]) -> int:
    """Run `arguments` (this llmkit command line) under accelerate's launcher; returns the exit code.

    Ctrl-C reaches this process and the launcher; the launcher passes it on to the workers (torch elastic
    starts each in a session of its own) and waits 30 s for them before killing them. The workers finish
    their step, save a checkpoint and exit 130; this process waits, prints the first worker's message and
    exits 130.
    """
    processes_here = (options.num_processes or options.machines) // options.machines
    cpu = runs_on_cpu(options, processes_here) if options.accelerate_config is None else options.cpu
    command, environment = accelerate_command(options, cpu, arguments)
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: interrupted.append(number))
    try:
        with tempfile.TemporaryDirectory(prefix="llmkit-launch-") as errors:
            environment[ERRORS_ENV] = errors
            code = subprocess.call(command, env=environment)
            reported = first_reported_error(Path(errors))
    finally:
        signal.signal(signal.SIGINT, previous)
    if reported is not None:
        print(reported["line"], file=sys.stderr)
        return int(reported["exit_code"])
    if interrupted and code != 0:
        return 130
    if code != 0:
        print(f"error: the training processes failed (exit code {code}); the output above says why", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------------------------- in a worker


def report_from_worker(line: str, exit_code: int) -> bool:
    """In a launched worker, hand a user error to the launching process (or, under a bare `accelerate
    launch`, leave it to rank 0); True when this process must exit without printing it."""
    if not inside_launcher():
        return False
    folder = os.environ.get(ERRORS_ENV)
    rank = int(os.environ.get("RANK", "0"))
    if folder and Path(folder).is_dir():
        record = {"rank": rank, "exit_code": exit_code, "line": line}
        (Path(folder) / f"rank-{rank}.json").write_text(json.dumps(record), encoding="utf-8")
        return True
    return rank != 0


def leave_process_group() -> None:
    """End a worker's process group before the interpreter exits, as accelerate's `end_training` does: left
    to interpreter shutdown, gloo's threads can abort the exit (SIGABRT, "terminate called without an
    active exception") of a run that succeeded."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def first_reported_error(folder: Path) -> dict[str, Any] | None:
    """The error of the lowest-ranked worker that reported one."""
    records = []
    for path in folder.glob("rank-*.json"):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return min(records, key=lambda record: record["rank"], default=None)


def launch_options_in_effect() -> list[str]:
    """Under a bare `accelerate launch`: llmkit's launch options that would start this run again."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return []
    options = ["--num-processes", str(world)]
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    machines = world // max(local, 1)
    if machines > 1:
        options += ["--num-machines", str(machines), "--machine-rank", os.environ.get("GROUP_RANK", "0")]
        options += ["--main-process-ip", os.environ.get("MASTER_ADDR", "?")]
        options += ["--main-process-port", os.environ.get("MASTER_PORT", str(DEFAULT_PORT))]
    return options


# ---------------------------------------------------------------------------------------------- what it became


def strategy(trainer: Any) -> dict[str, Any]:
    """How the run is really spread, read from the Trainer's accelerator (what a recipe asks can differ:
    accelerate runs FSDP on the CPU as DDP), with the batch sizes that follow from it."""
    import torch.distributed as dist

    args = trainer.args
    world = int(args.world_size)
    if getattr(trainer, "is_deepspeed_enabled", False):
        name = "DeepSpeed"
    elif getattr(trainer, "is_fsdp_enabled", False):
        name = "FSDP"
    elif world > 1:
        name = "DDP"
    elif args.n_gpu > 1:
        name = f"DataParallel over {args.n_gpu} GPUs"
    else:
        name = "single process"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    per_process = int(args.train_batch_size)  # per_device × GPUs of one process (DataParallel)
    return {
        "strategy": name,
        "world_size": world,
        "num_machines": max(world // max(local, 1), 1),
        "processes_per_machine": local,
        "device_type": args.device.type,
        "backend": dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
        "per_device_train_batch_size": int(args.per_device_train_batch_size),
        "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
        "global_train_batch_size": per_process * world * int(args.gradient_accumulation_steps),
    }


def strategy_lines(facts: dict[str, Any], args: Any) -> list[str]:
    """One line saying how the run is spread, and one more for each distributed setting that fell back."""
    world, machines = facts["world_size"], facts["num_machines"]
    where = f"{facts['device_type']}, {facts['backend']}" if facts["backend"] else facts["device_type"]
    spread = f"{world} process{'es' if world > 1 else ''} on {machines} machine{'s' if machines > 1 else ''}"
    lines = [
        f"strategy: {facts['strategy']}, {spread} ({where}); batch {facts['per_device_train_batch_size']} per "
        f"process × {world} × {facts['gradient_accumulation_steps']} accumulation = {facts['global_train_batch_size']}"
    ]
    got = facts["strategy"] if facts["strategy"] != "single process" else "a single process"
    if args.fsdp and facts["strategy"] != "FSDP":
        lines.append(
            f"warning: recipe field `training.fsdp` asks for FSDP, but this run is {got}: every process holds the "
            "whole model (accelerate shards only on GPUs, and only across processes)"
        )
    if args.deepspeed and facts["strategy"] != "DeepSpeed":
        lines.append(f"warning: recipe field `training.deepspeed` asks for DeepSpeed, but this run is {got}")
    return lines


# ---------------------------------------------------------------------------------------------- the launcher


def exit_status(code: int) -> int:
    """A child's exit code as a shell reports it (killed by signal N: 128 + N)."""
    return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    """`python -m llmkit.launch ACCELERATE-LAUNCH-ARGS`: accelerate's `launch`, ending with the workers' exit
    code instead of torch elastic's ChildFailedError/SignalException tracebacks and log lines (the workers
    have said what went wrong; `LLMKIT_DEBUG=1` keeps it all)."""
    import logging

    from accelerate.commands.launch import launch_command, launch_command_parser

    debug = bool(os.environ.get("LLMKIT_DEBUG"))
    if not debug:
        elastic = logging.getLogger("torch.distributed.elastic")
        elastic.addHandler(logging.NullHandler())
        elastic.propagate = False
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        launch_command(launch_command_parser().parse_args(argv))
    except ChildFailedError as failed:
        if debug:
            raise
        _, failure = failed.get_first_failure()
        return exit_status(failure.exitcode) or 1
    except SignalException as stopped:
        if debug:
            raise
        return 128 + int(stopped.sigval)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
