"""Regenerate the toy translation data of the CI recipes (deterministic: `python <this file>`).

English → "Pseudo", a made-up language with a fixed word dictionary and two word-order rules: adjectives
follow their noun, and the verb moves to the end of the clause (subject object verb, then the adverb).
"the old farmer feeds a small dog today." → "ka garo veta na tavo piko nutras hodi."
A tiny model must both look words up and reorder them: BLEU stays low when decoding, masking or the
prompt is wrong, and reaches about 45-55 (2+2-layer T5) and 65-75 (2-layer GPT-2) in the CI recipes' few hundred
steps. Eval sentences never occur in the training data.

- translation-train.jsonl, translation-eval.jsonl: rows `{"source": English, "target": Pseudo}`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
DETERMINERS = {"the": "ka", "a": "na"}
NOUNS = {
    "cat": "miru", "dog": "tavo", "bird": "pelu", "child": "soni", "farmer": "garo", "boat": "vasa",
    "house": "domi", "bread": "pana",
}  # fmt: skip
ADJECTIVES = {"red": "rusa", "small": "piko", "old": "veta", "big": "gran"}
VERBS = {"sees": "vidas", "likes": "amas", "follows": "sekas", "feeds": "nutras"}
ADVERBS = {"today": "hodi", "again": "denove", "at night": "nokte"}


def noun_phrase(rng: random.Random) -> tuple[str, str]:
    """(English, Pseudo) of `determiner [adjective] noun`: the adjective goes after the noun in Pseudo."""
    determiner, noun = rng.choice(sorted(DETERMINERS)), rng.choice(sorted(NOUNS))
    english, pseudo = [determiner], [DETERMINERS[determiner]]
    words, pseudo = [noun], [*pseudo, NOUNS[noun]]
    if rng.random() < 0.6:
        adjective = rng.choice(sorted(ADJECTIVES))
        words, pseudo = [adjective, noun], [*pseudo, ADJECTIVES[adjective]]
    if determiner == "a" and words[0][0] in "aeiou":
        english = ["an"]
    return " ".join([*english, *words]), " ".join(pseudo)


def sentence(rng: random.Random) -> tuple[str, str]:
    """English subject-verb-object[-adverb] → Pseudo subject-object-verb[-adverb]."""
    (subject, subject_p), (obj, obj_p) = noun_phrase(rng), noun_phrase(rng)
    verb = rng.choice(sorted(VERBS))
    english, pseudo = [subject, verb, obj], [subject_p, obj_p, VERBS[verb]]
    if rng.random() < 0.5:
        adverb = rng.choice(sorted(ADVERBS))
        english.append(adverb)
        pseudo.append(ADVERBS[adverb])
    return " ".join(english) + ".", " ".join(pseudo) + "."


def pairs(count: int, rng: random.Random, exclude: set[str]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    while len(rows) < count:
        source, target = sentence(rng)
        if source not in exclude:
            exclude.add(source)
            rows.append({"source": source, "target": target})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(20261201)
    seen: set[str] = set()
    write_jsonl(HERE / "translation-train.jsonl", pairs(800, rng, seen))
    write_jsonl(HERE / "translation-eval.jsonl", pairs(64, rng, seen))


if __name__ == "__main__":
    main()
