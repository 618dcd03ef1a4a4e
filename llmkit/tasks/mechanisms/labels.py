"""Label maps: the names a task predicts, read from the data (or kept from a trained checkpoint) and saved in
the model's config as `id2label`/`label2id`, so `predict` and `transformers` print the same names.

Values come per split (`{"train": [...], "eval": [...]}`), flattened already for tasks that label many items
per row (one tag per word). Integers must be 0..N-1 (a dataset's ClassLabel names are kept); strings are
numbered in sorted order; a checkpoint that knows its labels keeps its own numbering.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from llmkit.errors import LlmkitError

DEFAULT_LABEL_NAME = re.compile(r"^LABEL_\d+$")


def checkpoint_labels(config: Any) -> dict[str, int] | None:
    """label → id of a checkpoint already trained on named labels (None: its labels are the default LABEL_i)."""
    names = dict(getattr(config, "label2id", None) or {})
    trained = names and not all(DEFAULT_LABEL_NAME.match(str(n)) for n in names)
    return {str(k): int(v) for k, v in names.items()} if trained else None


def value_kind(values: dict[str, Iterable[Any]], column: str, allow_float: bool = True) -> str:
    """`int`, `str` or `float` for a label column; a missing label or a mix of kinds is an error."""
    kinds = set()
    for split, split_values in values.items():
        for index, value in enumerate(split_values):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise LlmkitError(f"data column `{column}` is empty in {split} row {index}")
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float | str)
                or (isinstance(value, float) and not allow_float)
            ):
                expected = "an int, a string or a float" if allow_float else "an int or a string"
                raise LlmkitError(f"data column `{column}`: {split} row {index} holds {value!r}; expected {expected}")
            kinds.add("str" if isinstance(value, str) else "float" if isinstance(value, float) else "int")
    if len(kinds) > 1:
        raise LlmkitError(
            f"data column `{column}` mixes label types ({' and '.join(sorted(kinds))}) across splits; use one kind"
        )
    return kinds.pop() if kinds else "int"


def check_label_sets(values: dict[str, Sequence[Any]], column: str, needs: str) -> None:
    """A model cannot learn from one label, nor be judged on labels it never saw: both are data errors."""
    trained = set(values["train"])
    shown = ", ".join(map(repr, sorted(trained, key=str)[:10]))
    if len(trained) < 2:
        raise LlmkitError(f"data column `{column}`: the train data has a single label ({shown}); {needs}")
    unseen = sorted(set(values.get("eval", ())) - trained, key=str)
    if unseen:
        raise LlmkitError(
            f"data column `{column}`: eval label(s) {', '.join(map(repr, unseen[:10]))} never appear in the "
            f"train data (train labels: {shown})"
        )


def label_ids(
    values: set[Any], column: str, known: dict[str, int] | None, training: bool, names: Sequence[str] | None = None
) -> dict[str, int]:
    """name → id for these label values. `known`: a trained checkpoint's map, kept when the values fit it;
    `names`: a dataset's ClassLabel names for integer labels."""
    if all(isinstance(v, str) for v in values):
        if known is not None and values <= set(known):
            return known
        if known is not None and not training:
            unknown = sorted(values - set(known))
            raise LlmkitError(
                f"data column `{column}`: label(s) {', '.join(map(repr, unknown[:5]))} are not among the model's "
                f"labels ({', '.join(known)})"
            )
        return {name: i for i, name in enumerate(sorted(values))}
    if min(values) < 0:
        raise LlmkitError(f"data column `{column}`: integer labels must be 0..N-1 (found {min(values)})")
    count = max(values) + 1
    if known is not None and len(known) >= count:
        return known
    if known is not None and not training:
        raise LlmkitError(f"data column `{column}`: label {max(values)} is beyond the model's {len(known)} labels")
    return {name: i for i, name in enumerate(list(names or [str(i) for i in range(count)]))}


def label_config(ids: dict[str, int], problem_type: str | None = None) -> dict[str, Any]:
    """Config fields that carry a label map (saved with the model)."""
    fields: dict[str, Any] = {"id2label": {i: name for name, i in ids.items()}, "label2id": dict(ids)}
    if problem_type:
        fields["problem_type"] = problem_type
    return fields


def label_count_notes(counts: dict[str, Any], unit: str, most: int = 20) -> list[str]:
    """`check` lines for label counts per split (`counts`: split → Counter of label → `unit`s, e.g. rows or
    words): the label set with its counts, and a warning for labels that only one split has."""
    labels = sorted({label for counter in counts.values() for label in counter}, key=str)
    splits = " / ".join(counts)
    listed = ", ".join(f"{label!s} {' / '.join(str(counts[s][label]) for s in counts)}" for label in labels[:most])
    notes = [f"labels ({len(labels)}; {unit} per {splits}): {listed}" + (" ..." if len(labels) > most else "")]
    for split, counter in counts.items():
        others = [s for s in counts if s != split]
        lonely = [str(label) for label in counter if others and all(label not in counts[o] for o in others)]
        if lonely:
            notes.append(f"warning: label(s) {', '.join(lonely[:10])} appear only in the {split} data")
    return notes
