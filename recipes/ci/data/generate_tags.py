"""Regenerate the tiny named-entity data of the token-classification CI recipes (deterministic;
`python recipes/ci/data/generate_tags.py`).

News-like sentences with person, place and organisation names (one or two words: B-/I- tags; a few, such as
`Jordan`, `Washington` and `Ford`, name a person in one sentence and a place or a company in another), written as
CoNLL columns: `tags-train.txt` (`token label`, space separated, after a `-DOCSTART-` line) and
`tags-eval.txt` (tab separated). A tiny model learns the names and their contexts in a few hundred steps, so
the recipes' entity-F1 gates fail when reading, alignment or scoring is wrong.
"""

from __future__ import annotations

import random
from pathlib import Path

HERE = Path(__file__).parent
PEOPLE = [
    "Emil Novak",
    "Anna Schmidt",
    "Carlos Mendes",
    "Li Wei",
    "Fatima Khan",
    "John Miller",
    "Maria Rossi",
    "Kenji Sato",
    "Olga Petrova",
    "David Cohen",
    "Sara Lind",
    "Peter Brandt",
    "Clinton",
    "Merkel",
    "Michael Jordan",
    "George Washington",
    "Harrison Ford",
]
PLACES = [
    "Berlin",
    "Lima",
    "New York",
    "Cairo",
    "Oslo",
    "Buenos Aires",
    "Tokyo",
    "Nairobi",
    "Madrid",
    "Hong Kong",
    "Toronto",
    "Lyon",
    "Jordan",
    "Washington",
]
ORGS = [
    "Siemens",
    "Reuters",
    "United Nations",
    "Deutsche Bank",
    "Toyota",
    "Nestle",
    "Red Cross",
    "World Bank",
    "Airbus",
    "Unilever",
    "Interpol",
    "General Motors",
    "Ford",
]
TEMPLATES = [
    "{PER} works for {ORG} in {LOC} .",
    "{PER} visited {LOC} last week .",
    "{ORG} opened a new office in {LOC} on Monday .",
    "The {ORG} spokesman {PER} said prices would rise .",
    "{PER} and {PER} met in {LOC} to discuss the merger with {ORG} .",
    "Shares of {ORG} fell 3 percent in {LOC} trading .",
    "{PER} , a lawyer from {LOC} , joined {ORG} in 1998 .",
    "Police in {LOC} arrested two men on Tuesday .",
    "The weather was cold and the roads were closed .",
    "{PER} told reporters the deal was good for {LOC} .",
    "A report by {ORG} praised the schools of {LOC} .",
    "Talks between {ORG} and {ORG} ended without an agreement .",
]
KINDS = {"PER": PEOPLE, "LOC": PLACES, "ORG": ORGS}


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    """One sentence as (word, tag) pairs."""
    pairs: list[tuple[str, str]] = []
    for word in rng.choice(TEMPLATES).split():
        kind = word[1:-1] if word.startswith("{") else None
        if kind is None:
            pairs.append((word, "O"))
            continue
        for index, part in enumerate(rng.choice(KINDS[kind]).split()):
            pairs.append((part, f"{'B' if index == 0 else 'I'}-{kind}"))
    return pairs


def write(path: Path, sentences: list[list[tuple[str, str]]], separator: str, docstart: bool) -> None:
    blocks = [f"-DOCSTART-{separator}O\n"] if docstart else []
    blocks += ["".join(f"{word}{separator}{tag}\n" for word, tag in pairs) for pairs in sentences]
    path.write_text("\n".join(blocks), encoding="utf-8")


def main() -> None:
    rng = random.Random(0)
    write(HERE / "tags-train.txt", [sentence(rng) for _ in range(600)], " ", docstart=True)
    write(HERE / "tags-eval.txt", [sentence(rng) for _ in range(100)], "\t", docstart=False)


if __name__ == "__main__":
    main()
