"""A run folder's checkpoints: the latest complete one, and whether one can continue its run exactly
(`--resume`). The Trainer writes them; llmkit only reads them."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError
from llmkit.run_folder import check_weights

PREFIX = "checkpoint-"
#: the Trainer writes it last into a checkpoint: a folder without it was cut short
STATE_FILE = "trainer_state.json"


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint (one that holds the Trainer's state, written last)."""
    complete = [
        folder
        for folder in output.glob(f"{PREFIX}*")
        if folder.name.removeprefix(PREFIX).isdigit() and (folder / STATE_FILE).is_file()
    ]
    return max(complete, key=lambda folder: int(folder.name.removeprefix(PREFIX)), default=None)


def resolve_resume(output: Path, resume: str | bool | None, max_steps: int) -> str | None:
    """`--resume latest` (True) → the newest complete checkpoint in the run folder; `--resume PATH` → that folder.

    A checkpoint must hold everything that makes the continued run the same run (weights, optimizer,
    scheduler, random state); a run that already reached its last step is not continued."""
    if not resume:
        return None
    if resume is True:
        found = latest_checkpoint(output)
        if found is None:
            raise LlmkitError(f"--resume: no complete checkpoint in {output} (nothing to continue; drop --resume)")
        path = found
    else:
        path = Path(resume).expanduser()
        if not (path / STATE_FILE).is_file():
            raise LlmkitError(f"--resume {path}: not a checkpoint folder (no {STATE_FILE})")
    check_checkpoint(path)
    state = read_state(path)
    planned = max_steps if max_steps > 0 else int(state.get("max_steps") or 0)
    step = int(state.get("global_step") or 0)
    if planned and step >= planned:
        raise LlmkitError(
            f"--resume: the run in {output} already finished at step {step} (max_steps {planned}); "
            "raise training.max_steps to train further"
        )
    return str(path)


def read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise LlmkitError(f"--resume {checkpoint}: {STATE_FILE} is not readable JSON") from None
    if not isinstance(state, dict):
        raise LlmkitError(f"--resume {checkpoint}: {STATE_FILE} is not a Trainer state")
    return state


def check_checkpoint(path: Path) -> None:
    """Exit 2 naming the file a checkpoint lacks (never a silent fresh optimizer) or the weights cut short."""
    if any(path.glob("global_step*")):
        return  # a DeepSpeed checkpoint: DeepSpeed checks its own shards
    sharded = any(path.glob("pytorch_model_fsdp*")) or any(path.glob("optimizer_*"))
    needed = [] if sharded else ["optimizer.pt"]
    needed.append("scheduler.pt")
    weights = [p for p in path.glob("*.safetensors")]
    if not weights and not sharded:
        raise LlmkitError(f"--resume {path}: no model weights (*.safetensors) in the checkpoint")
    for name in needed:
        if not (path / name).is_file():
            raise LlmkitError(f"--resume {path}: {name} is missing (the run could not continue exactly)")
    if not any(path.glob("rng_state*.pth")):
        raise LlmkitError(f"--resume {path}: rng_state.pth is missing (the run could not continue exactly)")
    check_weights(path, "--resume")
    for saved in sorted([*path.glob("*.pt"), *path.glob("*.pth")]):
        if not whole_torch_file(saved):
            raise LlmkitError(f"--resume {path}: {saved.name} is truncated or damaged")


def whole_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive: every member's checksum must hold (a cut-off copy fails here)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False
