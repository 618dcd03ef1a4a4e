"""Tagging words: CoNLL column files, words split from raw text with their character offsets, labels aligned
to sub-tokens, entity spans from BIO tags and the seqeval scores of Hugging Face's `run_ner.py`.

Kept apart from the task so that the parts a user can check by hand (a file read, an alignment, a span's
offsets) are small functions with no model in them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CONLL_SUFFIXES = (".txt", ".conll", ".bio", ".iob")
DOCSTART = "-DOCSTART-"
#: lines read to decide whether a .txt file is CoNLL columns (one `token ... label` a line) or running text
SNIFF_LINES = 200
#: a word, with inner hyphens and apostrophes (`major-league`, `don't`), or any other single character
WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")
ENTITY_PREFIXES = ("B-", "I-", "E-", "S-")


# ---------------------------------------------------------------------------- CoNLL files


def column_count(lines: Sequence[str]) -> int:
    """The field count most lines of a column file have (a few lines that differ are the user's mistakes,
    reported by line)."""
    from collections import Counter

    counts = Counter(len(line.split()) for line in lines if line.strip() and not line.startswith(DOCSTART))
    return counts.most_common(1)[0][0] if counts else 0


def read_conll(path: Path) -> list[dict[str, Any]] | None:
    """Sentences of a CoNLL-style file (`token [other columns] label` a line, tab or space separated, a blank
    line between sentences, `-DOCSTART-` lines skipped): rows `{"tokens", "tags"}`. None: not such a file."""
    if path.suffix.lower() not in CONLL_SUFFIXES:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise LlmkitError(f"{path} is not UTF-8 text") from None
    width = column_count(lines[:SNIFF_LINES])
    if width < 2:
        raise LlmkitError(
            f"{path}: expected CoNLL columns for token classification (`token ... label` a line, a blank line "
            "between sentences); most lines hold one word or none"
        )
    rows: list[dict[str, Any]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate([*lines, ""], 1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            if tokens:
                rows.append({"tokens": tokens, "tags": tags})
            tokens, tags = [], []
            continue
        if len(fields) != width:
            raise LlmkitError(
                f"{path}: line {number} has {len(fields)} field(s) ({line.strip()[:40]!r}); the file's lines have "
                f"{width} (`token ... label`, a blank line between sentences)"
            )
        tokens.append(fields[0])
        tags.append(fields[-1])
    return rows


# ---------------------------------------------------------------------------- words and sub-tokens


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Words and punctuation of a raw text, as (word, start, end) character offsets."""
    return [(match.group(), match.start(), match.end()) for match in WORD.finditer(text)]


def joined_offsets(words: Sequence[str]) -> list[tuple[str, int, int]]:
    """(word, start, end) of given words in the text they make joined by single spaces."""
    spans, position = [], 0
    for word in words:
        spans.append((word, position, position + len(word)))
        position += len(word) + 1
    return spans


def prepare_for_words(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make a byte-level BPE tokenizer (GPT-2, RoBERTa) put a space before every pre-split word, in place.

    Trained on running text, it knows most words as `Ġword`; given words one by one without the space, it
    would cut them into pieces it never saw between words. Changed in place so that the tokenizer saved with
    the run, and used by `predict`, encodes words the same way."""
    if not getattr(tokenizer, "is_fast", True) or not hasattr(tokenizer, "backend_tokenizer"):
        raise LlmkitError(
            f"task `token_classification` needs a fast tokenizer (one that maps tokens to words); "
            f"{type(tokenizer).__name__} is not one"
        )
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    parts = [pre[i] for i in range(_sequence_length(pre))] if _is_sequence(pre) else [pre]
    changed = False
    for part in parts:
        if part is not None and type(part).__name__ == "ByteLevel" and not part.add_prefix_space:
            part.add_prefix_space = True
            changed = True
    if changed and hasattr(tokenizer, "add_prefix_space"):  # GPT-2/RoBERTa classes rebuild it from this on load
        tokenizer.add_prefix_space = True
        tokenizer.init_kwargs["add_prefix_space"] = True


def _is_sequence(pre: Any) -> bool:
    return type(pre).__name__ == "Sequence"


def _sequence_length(pre: Any) -> int:
    import json

    return len(json.loads(pre.__getstate__())["pretokenizers"])


def word_groups(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[list[int]]:
    """Positions of `ids` grouped into words by the tokenizer's own marks (WordPiece continues a word with
    `##`; byte-level BPE and SentencePiece start one with `Ġ` / `▁`); one word per token for other kinds."""
    import json

    decoder = tokenizer.backend_tokenizer.decoder
    state = json.loads(decoder.__getstate__()) if decoder is not None else {}
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    if state.get("type") == "WordPiece":
        starts = [not piece.startswith(state.get("prefix", "##")) for piece in pieces]
    elif state.get("type") in ("ByteLevel", "Metaspace"):
        mark = "Ġ" if state["type"] == "ByteLevel" else state.get("replacement", "▁")
        starts = [piece.startswith(mark) for piece in pieces]
    else:
        starts = [True] * len(pieces)
    groups: list[list[int]] = []
    for position, start in enumerate(starts):
        if start or not groups:
            groups.append([position])
        else:
            groups[-1].append(position)
    return groups


def word_starts(word_ids: Sequence[int | None], words: int) -> list[int | None]:
    """For each word, the position of its first sub-token (None: the word was cut off or made no token)."""
    starts: list[int | None] = [None] * words
    for position, word in enumerate(word_ids):
        if word is not None and starts[word] is None:
            starts[word] = position
    return starts


def aligned_labels(
    word_ids: Sequence[int | None], labels: Sequence[int], label_all_tokens: bool, b_to_i: Sequence[int]
) -> list[int]:
    """Word labels on sub-tokens, as `run_ner.py` aligns them: the first sub-token of a word carries its label;
    the others -100 (ignored by the loss), or with `label_all_tokens` the label too (a `B-X` becomes `I-X`);
    special tokens -100."""
    aligned, previous = [], None
    for word in word_ids:
        if word is None:
            aligned.append(-100)
        elif word != previous:
            aligned.append(labels[word])
        else:
            aligned.append(b_to_i[labels[word]] if label_all_tokens else -100)
        previous = word
    return aligned


def b_to_i_ids(label2id: dict[str, int]) -> list[int]:
    """id → the id a word's later sub-tokens get with `label_all_tokens`: `B-X` → `I-X` where it exists."""
    mapping = list(range(max(label2id.values(), default=-1) + 1))
    for name, index in label2id.items():
        inner = "I-" + name[2:]
        if name.startswith("B-") and inner in label2id:
            mapping[index] = label2id[inner]
    return mapping


# ---------------------------------------------------------------------------- entities and scores


def is_bio(labels: Sequence[str]) -> bool:
    """Tags that mark entities (`O`, `B-PER`, `I-PER`, ... or IOBES), as opposed to POS or chunk-free tags."""
    return any(label.startswith(ENTITY_PREFIXES) for label in labels) and all(
        label == "O" or label.startswith(ENTITY_PREFIXES) for label in labels
    )


def entities(tags: Sequence[str | None], spans: Sequence[tuple[str, int, int]], text: str) -> list[dict[str, Any]]:
    """Entities of a tagged sentence, grouped as seqeval groups them (a `B-X` starts one, `I-X` continues it;
    an `I-X` after `O` or another type starts a new one), with character offsets into `text`."""
    from seqeval.metrics.sequence_labeling import get_entities

    found = []
    for label, first, last in get_entities([tag or "O" for tag in tags]):
        start, end = spans[first][1], spans[last][2]
        found.append({"text": text[start:end], "label": label, "start": start, "end": end})
    return found


def seqeval_scores(references: list[list[str]], predictions: list[list[str]]) -> dict[str, float]:
    """Entity-level precision / recall / F1 (micro average) and tag accuracy: the `overall_*` numbers of the
    `seqeval` metric that `run_ner.py` reports (default, non-strict mode)."""
    import warnings

    from seqeval.metrics import accuracy_score
    from seqeval.metrics.sequence_labeling import precision_recall_fscore_support

    with warnings.catch_warnings():  # POS tags "seem not to be NE tags"; no entity at all divides by zero
        warnings.simplefilter("ignore")
        precision, recall, f1, _ = precision_recall_fscore_support(references, predictions, average="micro")
        accuracy = accuracy_score(references, predictions)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "accuracy": float(accuracy)}
