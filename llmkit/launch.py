"""`--num-processes N`: start the same command again under `accelerate launch`, once per process.

Accelerate's launcher (torch elastic underneath) does the work; this module only builds its command line.
On CPU, `accelerate launch --cpu --num_processes N` starts a single process, so CPU runs use the multi-process
path with `ACCELERATE_USE_CPU=1` instead, which makes every process train on the CPU with the gloo backend.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from llmkit.errors import LlmkitError


def inside_launcher() -> bool:
    """True in a process started by accelerate/torchrun (it has a rank)."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ


def free_port() -> int:
    """A free TCP port for the rendezvous, so two runs on one machine do not collide on 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def accelerate_command(num_processes: int, cpu: bool, arguments: list[str]) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch ... -m llmkit ARGS` command line and its environment."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
        "-m",
        "llmkit",
        *arguments,
    ]
    environment = dict(os.environ)
    if cpu:
        environment["ACCELERATE_USE_CPU"] = "1"
        # One BLAS thread per process: N processes already share the cores.
        environment.setdefault("OMP_NUM_THREADS", "1")
    return command, environment


def needs_relaunch(num_processes: int, cpu: bool) -> bool:
    """Relaunch when more than one process is asked for and we are not already one of them."""
    if num_processes < 1:
        raise LlmkitError(f"--num-processes must be at least 1 (got {num_processes})")
    if cpu:
        os.environ["ACCELERATE_USE_CPU"] = "1"
    return num_processes > 1 and not inside_launcher()


def relaunch(num_processes: int, cpu: bool, arguments: list[str]) -> int:
    """Run `arguments` (an llmkit command line without --num-processes) in N processes; returns their exit code.

    Ctrl-C reaches every process of the terminal's group. The workers finish their step, save a checkpoint
    and exit 130 (the launcher forwards the signal too, which they treat as the same request, and waits 30 s
    for them before killing); this parent waits and exits 130.
    """
    if not cpu:
        import torch

        if not torch.cuda.is_available():
            raise LlmkitError("--num-processes needs GPUs; add --cpu to run the processes on the CPU (gloo backend)")
        if torch.cuda.device_count() < num_processes:
            raise LlmkitError(
                f"--num-processes {num_processes}: only {torch.cuda.device_count()} GPU(s) visible "
                "(add --cpu to run on the CPU)"
            )
    command, environment = accelerate_command(num_processes, cpu, arguments)
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: interrupted.append(number))
    try:
        code = subprocess.call(command, env=environment)
    finally:
        signal.signal(signal.SIGINT, previous)
    return 130 if interrupted and code != 0 else code


def strip_launch_options(argv: list[str]) -> list[str]:
    """The command line minus `--num-processes N` / `--num-processes=N` (the workers must not relaunch)."""
    result: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--num-processes":
            skip = True
            continue
        if item.startswith("--num-processes="):
            continue
        result.append(item)
    return result
