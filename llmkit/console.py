"""What a run prints: the libraries' own chatter only with `-v`, and one plain line per logging step when the
output is not a terminal (a log file, CI), where progress bars would be a wall of carriage returns.

`llmkit -v` sets LLMKIT_VERBOSE=1, so processes started by `--num-processes` inherit the choice.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import Any

#: metric names that time a run rather than judge it
BOOKKEEPING = ("_runtime", "_per_second", "_preparation_time")


def verbose() -> bool:
    return os.environ.get("LLMKIT_VERBOSE", "") not in ("", "0")


def on_terminal() -> bool:
    return sys.stdout.isatty()


def quiet_libraries() -> None:
    """Silence what a user cannot act on: dependency FutureWarnings, load tables, save progress bars."""
    if verbose():
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*mask_replace_prob.*")
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    if not on_terminal():
        datasets.disable_progress_bars()
    for name in ("accelerate", "torch.distributed", "torch.distributed.elastic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def say(message: str) -> None:
    """A line for the user from the main process only (a multi-process run says it once)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, flush=True)


def step_lines(tokens_per_step: float | None) -> Any:
    """A callback printing `step 10/60  loss 0.6931  lr 4.5e-05  12,345 tok/s  ETA 0:00:12` per logging step."""
    from transformers import TrainerCallback

    class StepLines(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.time()
            self.first_step = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started, self.first_step = time.time(), state.global_step

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            step, total = state.global_step, state.max_steps
            if "loss" in logs:
                elapsed = max(time.time() - self.started, 1e-9)
                rate = (step - self.first_step) / elapsed
                parts = [f"step {step}/{total}", f"loss {logs['loss']:.4f}"]
                if "learning_rate" in logs:
                    parts.append(f"lr {logs['learning_rate']:.2e}")
                if tokens_per_step and rate:
                    parts.append(f"{rate * tokens_per_step:,.0f} tok/s")
                if rate and total > step:
                    parts.append(f"ETA {format_seconds((total - step) / rate)}")
                print("  ".join(parts), flush=True)
            elif any(key.startswith("eval_") for key in logs):
                shown = [
                    f"{key} {value:.4f}"
                    for key, value in logs.items()
                    if key.startswith("eval_") and isinstance(value, float) and not key.endswith(BOOKKEEPING)
                ]
                print(f"eval at step {step}: " + "  ".join(shown), flush=True)

    return StepLines()


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def use_step_lines(trainer: Any, tokens_per_step: float | None, training: bool = True) -> None:
    """Off a terminal: the plain step lines instead of the Trainer's dict printer (its progress bar is off);
    an evaluation alone prints its own table instead."""
    from transformers.trainer_callback import PrinterCallback

    if on_terminal() and not trainer.args.disable_tqdm:
        return
    trainer.remove_callback(PrinterCallback)
    if training:
        trainer.add_callback(step_lines(tokens_per_step))


def rich_console() -> Any:
    """rich's Console for tables and reports: off a terminal it must not wrap lines at 80 columns."""
    from rich.console import Console

    return Console(soft_wrap=True) if on_terminal() else Console(width=10_000, soft_wrap=True)
