"""The run folder: the one writer of a run's files, and the one place that knows their names.

`--overwrite` replaces only a folder llmkit wrote (`folder_guard` judges which), and only once the new run
has succeeded: a replacing run is written to a staging folder beside the target and swapped in at the end,
so a failed, diverged or interrupted run leaves the previous one byte for byte as it was. Everything a run
leaves (model, recipe, metrics, predictions, model card, `run.json`, `loss.png`, the Trainer's state, and
`eval/<name>/` of later evaluations) is written through `RunFolder`, by the main process only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from llmkit import __version__, report
from llmkit.errors import LlmkitError
from llmkit.folder_guard import (
    LOCK,
    MARKER,
    check_unlocked,
    check_writable,
    is_empty,
    is_llmkit_folder,
    marker_kind,
    previous_path,
    refuse_inside_inputs,
    refuse_to_replace,
    release_lock,
    staging_path,
    take_lock,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Trainer

    from llmkit.recipe import Recipe

__all__ = ["LOCK", "MARKER", "RunFolder", "is_llmkit_folder", "marker_kind"]

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
CARD_FILE = "README.md"
FACTS_FILE = "run.json"
PLOT_FILE = "loss.png"
CONFIG_FILE = "config.json"
ADAPTER_FILE = "adapter_config.json"
EVAL_FOLDER = "eval"
#: a model folder (a run, a merge, a hub download) holds one of these
MODEL_FILES = (CONFIG_FILE, ADAPTER_FILE)


def is_main_process() -> bool:
    """Rank 0 of a multi-process run (or the only process): the one that writes the run folder."""
    return os.environ.get("RANK", "0") == "0"


# --------------------------------------------------------------------------- what a folder holds


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in MODEL_FILES)


def is_adapter_folder(path: str | Path | None) -> bool:
    """A LoRA run folder: the trained adapter, whose base weights live elsewhere."""
    return path is not None and (Path(path) / ADAPTER_FILE).is_file()


def adapter_base(path: Path) -> str:
    """The base checkpoint a PEFT adapter folder was trained from."""
    try:
        base = json.loads((path / ADAPTER_FILE).read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        raise LlmkitError(f"{path}: {ADAPTER_FILE} is damaged (not JSON naming `base_model_name_or_path`)") from None
    return str(base)


def recipe_path(folder: Path) -> Path:
    """The resolved recipe a run folder keeps; a one-line error when the folder has none."""
    path = folder / RECIPE_FILE
    if not path.is_file():
        raise LlmkitError(f"{folder} is not a run folder (no {RECIPE_FILE}; was it written by llmkit?)")
    return path


def read_metrics(folder: Path) -> dict[str, Any] | None:
    """The metrics a training run wrote (None when there are none to read)."""
    try:
        content = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


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


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Numbers only (JSON has no NaN): non-finite values are kept as strings."""
    return {
        key: value if math.isfinite(value) else str(value)
        for key, value in metrics.items()
        if isinstance(value, int | float)
    }


def timestamp(seconds: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


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
        target = Path(os.path.normpath(target))
        if overwrite and resume:
            raise LlmkitError("--resume continues the run in the output folder; --overwrite replaces it: pick one")
        check_writable(target, "recipe field `training.output_dir`")
        check_unlocked(target)
        replacing = target.is_dir() and not is_empty(target)
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
        """A folder written in one go (`merge`, `export`): staged, then moved in place."""
        target = Path(os.path.normpath(target))
        refuse_inside_inputs(target, protected)
        check_writable(target, "OUT_DIR")
        check_unlocked(target)
        if target.is_dir() and not is_empty(target):
            if not overwrite:
                raise LlmkitError(f"output folder {target} is not empty: pass --overwrite to replace it")
            refuse_to_replace(target, protected, kind, "OUT_DIR")
        return cls(target, staging_path(target), kind)

    @classmethod
    def existing(cls, folder: Path) -> RunFolder:
        """A finished run folder that gains files in place (a later evaluation's `eval/<name>/`)."""
        return cls(folder, folder)

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
        if self.replacing and self.work.exists() and not is_empty(self.work):
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
            previous = previous_path(self.target)
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

    def interrupted_message(self, step: int) -> str:
        saved = self.work / f"checkpoint-{step}"
        if self.replacing:
            return (
                f"interrupted at step {step}; the previous run in {self.target} is untouched and the new run's "
                f"checkpoint is in {saved} (delete {self.work} to drop it)"
            )
        return f"interrupted at step {step}; checkpoint saved in {saved}"

    def diverged_message(self, what: str) -> str:
        """Names only checkpoints that exist: a replacing run's are dropped with it, the previous run stays."""
        advice = "lower training.learning_rate (or set training.max_grad_norm)"
        if self.replacing:
            kept = f"the previous run in {self.target} is untouched"
            return f"training diverged: {what}; {advice}; no model was written and {kept}"
        kept = self.checkpoints()
        where = f"checkpoints kept in {self.work}: {', '.join(kept)}" if kept else "no checkpoint was saved before it"
        return f"training diverged: {what}; {advice}; no final model was written ({where})"

    # ------------------------------------------------------------------ writing (main process only)

    def write_json(self, name: str, content: Any) -> Path:
        return write_json(self.work / name, content)

    def write_text(self, name: str, text: str) -> Path:
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
        return path

    def write_predictions(self, predictions: list[dict[str, Any]], name: str = PREDICTIONS_FILE) -> Path:
        return self.write_text(name, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in predictions))

    def write_recipe(self, recipe: Recipe) -> Path:
        return self.write_text(RECIPE_FILE, recipe.to_yaml())

    def copy_recipe(self, source: Path) -> Path:
        """A derived folder (`merge`, `export`) keeps the recipe of the run it came from."""
        return self.write_text(RECIPE_FILE, recipe_path(source).read_text(encoding="utf-8"))

    def write_run(
        self,
        trainer: Trainer,
        recipe: Recipe,
        metrics: dict[str, Any],
        predictions: list[dict[str, Any]] | None,
        card: str,
        facts: dict[str, Any],
    ) -> None:
        """Everything a finished run leaves besides its weights."""
        trainer.save_state()  # trainer_state.json (in `work`, the Trainer's output_dir): the full log history
        if recipe.peft is not None:  # the tuned config (label maps, pad id) beside the adapter
            base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
            base.config.save_pretrained(str(self.work))
        self.write_recipe(recipe)
        self.write_json(METRICS_FILE, numeric_metrics(metrics))
        if predictions is not None:
            self.write_predictions(predictions)
        report.plot_losses(trainer.state.log_history, self.work / PLOT_FILE)
        self.write_text(CARD_FILE, card)
        self.write_json(FACTS_FILE, facts)

    def evaluation_folder(self, name: str) -> Path:
        return self.work / EVAL_FOLDER / name

    def write_evaluation(self, name: str, metrics: dict[str, Any], predictions: list[dict[str, Any]] | None) -> Path:
        """A later evaluation's results, in `eval/<name>/`: the training run's own metrics stay as they were."""
        written = self.evaluation_folder(name)
        write_json(written / METRICS_FILE, numeric_metrics(metrics))
        if predictions is not None:
            self.write_predictions(predictions, str(written.relative_to(self.work) / PREDICTIONS_FILE))
        return written

    def write_card(self, card: str) -> Path:
        return self.write_text(CARD_FILE, card)

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
    entries = [entry for key, entry in header.items() if key != "__metadata__"] if isinstance(header, dict) else None
    if entries is None or not all(isinstance(entry, dict) and "data_offsets" in entry for entry in entries):
        return "is not a safetensors file"
    expected = 8 + length + max((entry["data_offsets"][1] for entry in entries), default=0)
    if size < expected:
        return f"is truncated ({size} of {expected} bytes)"
    return None


def check_weights(folder: Path, what: str) -> None:
    """Every *.safetensors file of a model folder is whole (a truncated copy fails here, not in a traceback)."""
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            raise LlmkitError(f"{what} {folder}: {path.name} {problem}")
