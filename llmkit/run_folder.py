"""The run folder: the one writer of a run's files, and the judge of which folders llmkit may replace.

A folder is an llmkit run folder when it holds the marker file `.llmkit` (written when llmkit creates the
folder), never by a guess from file names. `--overwrite` replaces only such a folder, never one that holds
the user's recipe, data, model or tokenizer, and only once the new run has succeeded: a replacing run is
written to a staging folder beside the target and swapped in at the end, so a failed, diverged or
interrupted run leaves the previous one byte for byte as it was. One run at a time: a lock file inside the
target names the process that holds it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from llmkit import __version__
from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Trainer

    from llmkit.recipe import Recipe

MARKER = ".llmkit"
LOCK = ".llmkit.lock"
#: a model folder (a run, a merge, a hub download) holds one of these
MODEL_FILES = ("config.json", "adapter_config.json")


def is_main_process() -> bool:
    """Rank 0 of a multi-process run (or the only process): the one that writes the run folder."""
    return os.environ.get("RANK", "0") == "0"


def marker_kind(path: Path) -> str | None:
    """The kind of folder llmkit wrote here (`run`, `merge`, `export`), from its marker; None when the marker
    is missing or is not one llmkit wrote (an empty or foreign `.llmkit` file does not count)."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(marker, dict) or marker.get("written_by") != "llmkit":
        return None
    kind = marker.get("kind")
    return kind if isinstance(kind, str) else None


def is_llmkit_folder(path: Path) -> bool:
    return marker_kind(path) is not None


#: the folders llmkit keeps beside a target while it replaces it
SIDE_FOLDERS = (".llmkit-staging", ".llmkit-previous")


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in MODEL_FILES)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def local_inputs(recipe: Recipe) -> list[tuple[str, Path]]:
    """What the user gave a run that lives on disk: a run folder must never swallow one of them."""
    inputs = [("the recipe", source) for source in recipe.sources]
    named = [
        ("data.train", recipe.data.train),
        ("data.eval", recipe.data.eval),
        ("model.name_or_path", recipe.model.name_or_path),
        ("tokenizer.name_or_path", recipe.tokenizer.name_or_path),
    ]
    inputs += [(name, Path(value)) for name, value in named if value and Path(value).exists()]
    return inputs


def refuse_to_replace(
    path: Path, protected: Iterable[tuple[str, Path]], kind: str = "run", field_name: str = "`training.output_dir`"
) -> None:
    """Why `path` may not be replaced, as a one-line error; returns when it may."""
    option = "--overwrite"
    target = path.resolve()
    cwd = Path.cwd().resolve()
    if _inside(cwd, target):
        where = "the working folder" if target == cwd else f"an ancestor of the working folder ({cwd})"
        raise LlmkitError(f"{option} refuses {path}: it is {where}; choose another {field_name}")
    if target == Path.home().resolve() or target.parent == target:
        raise LlmkitError(f"{option} refuses {path}: it is the {'home' if target.parent != target else 'root'} folder")
    for name, item in protected:
        if _inside(item.resolve(), target):
            raise LlmkitError(f"{option} refuses {path}: it holds {name} ({item}); choose another output folder")
    found = marker_kind(path)
    if found is None:
        raise LlmkitError(
            f"{option} refuses {path}: llmkit did not write it (no {MARKER} marker); "
            "move or delete it yourself, or choose another output folder"
        )
    if found != kind:
        raise LlmkitError(f"{option} refuses {path}: it holds an llmkit {found} folder, not a {kind} folder")


def _is_empty(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _check_writable(path: Path, field_name: str) -> None:
    if path.is_symlink() and not path.exists():
        raise LlmkitError(f"{field_name}: {path} is a symbolic link to nothing ({os.readlink(path)})")
    if path.name.endswith(SIDE_FOLDERS):
        raise LlmkitError(f"{field_name}: {path} is a folder llmkit keeps beside a run while replacing it")
    if path.exists() and not path.is_dir():
        raise LlmkitError(f"{field_name}: {path} exists and is not a folder")
    if path.is_dir():  # test it without writing into it: a refused command leaves the folder as it was
        if not os.access(path, os.W_OK):
            raise LlmkitError(f"{field_name}: {path} is not writable")
        return
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise LlmkitError(f"{field_name}: cannot create {path}: {existing} is a file")
    if not _can_write_in(existing):
        raise LlmkitError(f"{field_name}: {existing} is not writable")


def _can_write_in(folder: Path) -> bool:
    """Try it (a permission check alone is wrong for root, read-only mounts and full disks)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@dataclass
class RunFolder:
    """Where a run ends up (`target`) and where it is written meanwhile (`work`: the target itself, or a
    staging folder beside it when the run replaces an earlier one)."""

    target: Path
    work: Path
    kind: str = "run"
    _lock: IO[str] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ opening

    @classmethod
    def for_training(
        cls, target: Path, overwrite: bool, resume: bool, protected: Iterable[tuple[str, Path]]
    ) -> RunFolder:
        """Check that a run may write `target` (nothing is written yet)."""
        field_name = "recipe field `training.output_dir`"
        target = Path(os.path.normpath(target))
        if overwrite and resume:
            raise LlmkitError("--resume continues the run in the output folder; --overwrite replaces it: pick one")
        _check_writable(target, field_name)
        check_unlocked(target)
        replacing = target.is_dir() and not _is_empty(target)
        if replacing and not (overwrite or resume):
            raise LlmkitError(
                f"output folder {target} is not empty: pass --overwrite to replace it or --resume to continue it"
            )
        if replacing and overwrite:
            refuse_to_replace(target, protected)
            return cls(target, staging_path(target))
        if resume and replacing and not is_llmkit_folder(target):
            raise LlmkitError(f"--resume: {target} was not written by llmkit (no {MARKER} marker)")
        return cls(target, target)

    @classmethod
    def for_output(cls, target: Path, overwrite: bool, protected: Iterable[tuple[str, Path]], kind: str) -> RunFolder:
        """A folder written in one go (`merge`, `export`): staged, then moved in place. It may not lie inside
        one of the inputs (a later `--overwrite` of that input would take it along)."""
        target = Path(os.path.normpath(target))
        for name, item in protected:
            if item.is_dir() and item.resolve() in target.resolve().parents:
                raise LlmkitError(f"OUT_DIR {target} lies inside {name} ({item}); choose a folder outside it")
        _check_writable(target, "OUT_DIR")
        check_unlocked(target)
        if target.is_dir() and not _is_empty(target):
            if not overwrite:
                raise LlmkitError(f"output folder {target} is not empty: pass --overwrite to replace it")
            refuse_to_replace(target, protected, kind, "OUT_DIR")
        return cls(target, staging_path(target), kind)

    @property
    def replacing(self) -> bool:
        return self.work != self.target

    def create(self) -> None:
        """Hold the target's lock and mark the folder being written as llmkit's (main process only).

        The Trainer may already have made the (empty) folder; a staging folder left by a replacing run
        that was killed is llmkit's own and is cleared."""
        if not is_main_process():
            return
        self.target.mkdir(parents=True, exist_ok=True)
        self._lock = take_lock(self.target)
        if self.replacing and self.work.exists() and not _is_empty(self.work):
            if not is_llmkit_folder(self.work):
                self.release()
                raise LlmkitError(f"{self.work} is in the way of the staging folder and llmkit did not write it")
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        if not (self.work / MARKER).is_file():
            marker = {"written_by": "llmkit", "version": __version__, "kind": self.kind, "created": timestamp()}
            (self.work / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")

    # ------------------------------------------------------------------ closing

    def commit(self) -> None:
        """A replacing run succeeded: swap it in for the previous one (two renames; the old one goes last)."""
        if is_main_process() and self.replacing:
            previous = self.target.parent / f".{self.target.name}.llmkit-previous"
            if previous.exists():
                shutil.rmtree(previous)
            os.rename(self.target, previous)
            os.rename(self.work, self.target)
            self.work = self.target
            shutil.rmtree(previous, ignore_errors=True)
        self.release()

    def discard(self) -> None:
        """A replacing run failed: remove what it wrote; the previous run was never touched."""
        if is_main_process() and self.replacing and self.work.exists():
            shutil.rmtree(self.work, ignore_errors=True)
        self.release()

    def release(self) -> None:
        if self._lock is not None:
            release_lock(self._lock, self.target)
            self._lock = None

    def checkpoints(self) -> list[str]:
        """The checkpoint folders that really exist in the folder being written."""
        found = [p for p in self.work.glob("checkpoint-*") if p.name.removeprefix("checkpoint-").isdigit()]
        return [p.name for p in sorted(found, key=lambda p: int(p.name.removeprefix("checkpoint-")))]

    # ------------------------------------------------------------------ writing (main process only)

    def write_json(self, name: str, content: Any) -> Path:
        return write_json(self.work / name, content)

    def write_predictions(self, predictions: list[dict[str, Any]], name: str = "predictions.jsonl") -> Path:
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            for record in predictions:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(temporary, path)
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.work / name
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
        return path

    def write_recipe(self, recipe: Recipe) -> Path:
        return self.write_text("recipe.yaml", recipe.to_yaml())

    def save_model(self, trainer: Trainer, tokenizer: PreTrainedTokenizerBase) -> None:
        """Write the final model next to the run, then move it in: an interrupted save never leaves a half model.

        Every process takes part: FSDP and DeepSpeed gather the sharded weights collectively."""
        staging = self.work / ".final.tmp"
        if trainer.is_world_process_zero() and staging.exists():
            shutil.rmtree(staging)
        trainer.accelerator.wait_for_everyone()  # no process writes into a folder another is still removing
        trainer.save_model(str(staging))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(staging))
            (staging / "training_args.bin").unlink(missing_ok=True)
            for item in staging.iterdir():
                os.replace(item, self.work / item.name)
            staging.rmdir()

    def save_pretrained(self, model: Any, tokenizer: PreTrainedTokenizerBase) -> None:
        model.save_pretrained(str(self.work))
        tokenizer.save_pretrained(str(self.work))


def staging_path(target: Path) -> Path:
    """Beside the target (same filesystem, so the final swap is a rename), hidden, named after it."""
    return target.parent / f".{target.name}.llmkit-staging"


# --------------------------------------------------------------------------- the lock


def _lock_holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


def check_unlocked(target: Path) -> None:
    """Exit 2 when another live run holds the folder's lock (checked before anything is loaded)."""
    lock = target / LOCK
    if not lock.is_file():
        return
    handle = _try_lock(lock, create=False)
    if handle is None:
        raise LlmkitError(
            f"output folder {target} is in use by another llmkit run (pid {_lock_holder(lock)}); "
            "wait for it to finish or choose another `training.output_dir`"
        )
    handle.close()


def _try_lock(path: Path, create: bool) -> IO[str] | None:
    """An open handle holding an exclusive lock on `path`, or None when another process holds it."""
    import fcntl

    try:
        handle = path.open("a+" if create else "r+", encoding="utf-8")
    except OSError:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def take_lock(target: Path) -> IO[str]:
    """Hold the target's lock for this run; a lock left by a process that died is taken over with a note."""
    path = target / LOCK
    stale = _lock_holder(path) if path.is_file() else None
    handle = _try_lock(path, create=True)
    if handle is None:
        raise LlmkitError(
            f"output folder {target} is in use by another llmkit run (pid {_lock_holder(path)}); "
            "wait for it to finish or choose another `training.output_dir`"
        )
    if stale is not None:
        print(f"note: took over the lock on {target} left by pid {stale}, which no longer holds it", file=sys.stderr)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def release_lock(handle: IO[str], target: Path) -> None:
    (target / LOCK).unlink(missing_ok=True)
    handle.close()


# --------------------------------------------------------------------------- files


def write_json(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(content, indent=2, sort_keys=True, default=_jsonable) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Numbers only; non-finite values kept as strings JSON can hold."""
    result: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, int | float):
            result[key] = value if math.isfinite(value) else str(value)
    return result


def timestamp(seconds: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be loaded (missing, truncated, not safetensors), or None when it is whole.

    Reads only the header: the file must be exactly header + the byte ranges the header declares."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return "is truncated (no header)"
            length = int.from_bytes(head, "little")
            if length <= 0 or 8 + length > size:
                return "is truncated or not a safetensors file (bad header length)"
            header = json.loads(handle.read(length))
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError, UnicodeDecodeError):
        return "is not a safetensors file (unreadable header)"
    if not isinstance(header, dict) or not all(
        isinstance(entry, dict) and "data_offsets" in entry for key, entry in header.items() if key != "__metadata__"
    ):
        return "is not a safetensors file"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"is truncated ({size} of {expected} bytes)"
    return None


def check_weights(folder: Path, what: str) -> None:
    """Every *.safetensors file of a model folder is whole (a truncated copy fails here, not in a traceback)."""
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            raise LlmkitError(f"{what} {folder}: {path.name} {problem}")
