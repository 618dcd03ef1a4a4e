"""Write the multiple-choice CI data: `choices-train.jsonl` and `choices-eval.jsonl` (deterministic).

Each row: a `context` naming a person, a `question` (the start of the next sentence, SWAG's `sent2`), three
or four `choices` (rows differ, as the task allows) and the `label` (index of the right one). Every person
belongs to a trade and the right ending is one of that trade's. The wrong ones are absurd (`ABSURD`), as many
of SWAG's machine-written endings are, except that in half of the rows one of them is another trade's ending:
only the context tells that one apart. The context says what the person often does (two of the trade's
endings) and what the moon does in a dream (an absurd ending), so the tokenizer, trained on contexts, sees
every word of the choices. Chance is about 0.27; a model that only spots absurd endings gets about 0.75; a
2-layer GPT-2 built from config, scoring endings after the context, learns the rest within a few dozen steps.

Run: python recipes/ci/data/generate_choices.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TRADES = {
    "cook": (["the chef", "the baker"], ["stirs the hot soup", "slices fresh bread", "bakes a sweet cake"]),
    "pilot": (["the pilot", "the captain"], ["flies the plane", "lands on the runway", "checks the wings"]),
    "farmer": (["the farmer", "the shepherd"], ["milks the cow", "feeds the sheep", "plows the field"]),
    "doctor": (["the doctor", "the nurse"], ["treats the patient", "checks his pulse", "gives an injection"]),
    "singer": (["the singer", "the drummer"], ["sings a loud song", "plays the drums", "tunes the guitar"]),
    "painter": (["the painter", "the artist"], ["paints the wall", "mixes blue paint", "draws a portrait"]),
}
ABSURD = ["floats into the sky", "melts into the floor", "turns into a cloud", "eats a star", "sings to the rocks"]
QUESTIONS = ["then", "after that", "next"]


def row(rng: random.Random) -> dict[str, object]:
    trade = rng.choice(sorted(TRADES))
    subjects, endings = TRADES[trade]
    usual = rng.sample(endings, 2)
    count = rng.choice([3, 4, 4, 4])
    wrong = rng.sample(ABSURD, count - 1)
    if rng.random() < 0.5:  # a wrong ending of another trade: only the context tells it apart
        wrong[0] = rng.choice(TRADES[rng.choice([t for t in sorted(TRADES) if t != trade])][1])
    choices = [rng.choice(endings), *wrong]
    order = list(range(count))
    rng.shuffle(order)
    subject = rng.choice(subjects)
    return {
        "context": f"{subject} , who often {usual[0]} and {usual[1]} , dreamt that the moon {rng.choice(ABSURD)} .",
        "question": f"{rng.choice(QUESTIONS)} {subject}",
        "choices": [choices[i] for i in order],
        "label": order.index(0),
    }


def write(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(rows):
            handle.write(json.dumps(row(rng)) + "\n")


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    write(here / "choices-train.jsonl", 240, seed=11)
    write(here / "choices-eval.jsonl", 60, seed=12)
