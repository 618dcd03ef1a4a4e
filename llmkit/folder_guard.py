"""Which folders llmkit may write or replace, and the lock that keeps one run per folder.

A folder is llmkit's when it holds the marker file `.llmkit` (written when llmkit creates the folder), never
by a guess from file names. `--overwrite` replaces only such a folder, never one that holds the user's
recipe, data, model or tokenizer. A lock file inside the target names the process that holds it.
Everything here only reads or tests: `run_folder.RunFolder` does the writing.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from llmkit.errors import LlmkitError

MARKER = ".llmkit"
LOCK = ".llmkit.lock"
#: the folders llmkit keeps beside a target while it replaces it
SIDE_FOLDERS = (".llmkit-staging", ".llmkit-previous")


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


def is_empty(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def staging_path(target: Path) -> Path:
    """Beside the target (same filesystem, so the final swap is a rename), hidden, named after it."""
    return target.parent / f".{target.name}{SIDE_FOLDERS[0]}"


def previous_path(target: Path) -> Path:
    """Where the replaced run waits, for the instant between the two renames of a swap."""
    return target.parent / f".{target.name}{SIDE_FOLDERS[1]}"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


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


def refuse_inside_inputs(target: Path, protected: Iterable[tuple[str, Path]]) -> None:
    """An output may not lie inside one of the inputs (a later `--overwrite` of that input would take it along)."""
    for name, item in protected:
        if item.is_dir() and item.resolve() in target.resolve().parents:
            raise LlmkitError(f"OUT_DIR {target} lies inside {name} ({item}); choose a folder outside it")


def check_writable(path: Path, field_name: str) -> None:
    """`path` can become a run folder; tested without writing into it (a refused command leaves it as it was)."""
    if path.is_symlink() and not path.exists():
        raise LlmkitError(f"{field_name}: {path} is a symbolic link to nothing ({os.readlink(path)})")
    if path.name.endswith(SIDE_FOLDERS):
        raise LlmkitError(f"{field_name}: {path} is a folder llmkit keeps beside a run while replacing it")
    if path.exists() and not path.is_dir():
        raise LlmkitError(f"{field_name}: {path} exists and is not a folder")
    if path.is_dir():
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


# --------------------------------------------------------------------------- the lock


def _lock_holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


def _in_use(target: Path, holder: str) -> LlmkitError:
    return LlmkitError(
        f"output folder {target} is in use by another llmkit run (pid {holder}); "
        "wait for it to finish or choose another `training.output_dir`"
    )


def check_unlocked(target: Path) -> None:
    """Exit 2 when another live run holds the folder's lock (checked before anything is loaded)."""
    lock = target / LOCK
    if not lock.is_file():
        return
    handle = _try_lock(lock, create=False)
    if handle is None:
        raise _in_use(target, _lock_holder(lock))
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
        raise _in_use(target, _lock_holder(path))
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
