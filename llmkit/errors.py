"""Errors a user can act on: each prints as one line and maps to an exit code.

Exit codes (the CLI contract): 2 for a user error (bad recipe, missing file or column, bad override),
1 for a run that finished but failed (expectations missed, training diverged).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LlmkitError(Exception):
    """A problem with the user's input; printed as one line, exit code 2."""

    exit_code = 2


class ExpectationsNotMet(LlmkitError):
    """`eval --check` found a metric below the recipe's `expect:` bar."""

    exit_code = 1


class TrainingDiverged(LlmkitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean `x`?)' suffix when a close match exists, else ''."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{match[0]}`?)" if match else ""


class Interrupted(LlmkitError):
    """Stopped by Ctrl-C (exit 130) or SIGTERM (exit 143), as shells report a process a signal ended;
    during training, after saving a checkpoint."""

    exit_code = 130
    label = "stopped"

    def __init__(self, message: str, signal_number: int | None = None, resumable: bool = True) -> None:
        super().__init__(message)
        #: whether `--resume latest` continues it (a replacing run's checkpoint waits in its staging folder)
        self.resumable = resumable
        if signal_number is not None:
            self.exit_code = 128 + signal_number
