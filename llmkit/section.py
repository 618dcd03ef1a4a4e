"""The base of every recipe section, and the path expansion its path fields share.

Apart from `llmkit.recipe` so that a task module can declare its own options section without importing the
recipe schema, which is built from the task registry.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict

UNSET_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def expand_path(value: Any) -> Any:
    """`~` and `$VAR` in a path field, expanded once when the recipe is validated, and `a/b/..` folded to `a`:
    every writer and reader (checkpoints, TensorBoard, the final model, the data loader, the safety checks)
    then sees the same folder."""
    if not isinstance(value, str) or not value.strip():
        return value
    expanded = os.path.expandvars(os.path.expanduser(value))
    unset = UNSET_VARIABLE.search(expanded)
    if unset:
        raise ValueError(f"environment variable `{unset.group(1) or unset.group(2)}` is not set")
    return os.path.normpath(expanded) if "/" in expanded or expanded in (".", "..") else expanded


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
