"""Regenerate the tiny offline data sets of the CI recipes (deterministic; `python recipes/ci/data/generate.py`).

Each set is small and synthetic but has a rule a tiny model can learn in a few dozen steps, so a CI
recipe's `expect:` gate fails when preprocessing, labels or decoding are wrong:
- reviews-{train,eval}.jsonl: 3-class sentiment with string labels (classification);
- council-{train,eval}.jsonl: short news items whose one-line summary copies the town and the decision;
- people-{train,eval}.json: SQuAD v2 in the original nested layout, including unanswerable questions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
WORDS = {
    "positive": ["great", "wonderful", "delightful", "superb", "moving", "charming", "brilliant", "funny"],
    "negative": ["dull", "boring", "awful", "tedious", "clumsy", "bland", "terrible", "lifeless"],
    "neutral": ["ordinary", "average", "standard", "typical", "conventional", "routine", "middling", "plain"],
}
SUBJECTS = ["the film", "this movie", "the plot", "the acting", "the script", "the soundtrack", "the ending", "the cast"]
REVIEWS = ["{s} was {a} .", "a {a} and {b} story .", "i found {s} {a} , really {b} .", "{s} feels {a} from start to end ."]
TOWNS = ["Avonford", "Brookmere", "Castleton", "Dunmore", "Eastwick", "Fairhaven", "Glenrock", "Highbury",
         "Ivydale", "Kingsbridge", "Larkfield", "Millbrook"]
ACTIONS = ["build a new park", "close the old library", "raise parking fees", "repair the main bridge",
           "open a night market", "plant a thousand trees", "cut the bus budget", "ban cars downtown"]
FILLER = ["Residents spoke for hours.", "The meeting started late.", "Local shops were closed.",
          "Several reporters attended.", "The mayor thanked the volunteers.", "It rained all evening."]
NAMES = ["Alice", "Bruno", "Chen", "Dana", "Emil", "Farah", "Goran", "Hana", "Ivan", "Jonas", "Kira", "Luis"]
CITIES = ["Paris", "Lisbon", "Oslo", "Cairo", "Lima", "Seoul", "Dublin", "Quito"]
JOBS = ["baker", "pilot", "nurse", "painter", "farmer", "teacher", "plumber", "chemist"]


def reviews(count: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(count):
        label = rng.choice(sorted(WORDS))
        a, b = rng.sample(WORDS[label], 2)
        rows.append({"sentence": rng.choice(REVIEWS).format(s=rng.choice(SUBJECTS), a=a, b=b), "sentiment": label})
    return rows


def council(count: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(count):
        town, action = rng.choice(TOWNS), rng.choice(ACTIONS)
        sentences = rng.sample(FILLER, 3)
        sentences.insert(rng.randrange(1, 4), f"In the end the council voted to {action}.")
        document = f"The {town} council met on Monday. " + " ".join(sentences)
        rows.append({"document": document, "summary": f"{town} council voted to {action}."})
    return rows


def people(count: int, rng: random.Random) -> dict:
    paragraphs = []
    for index in range(count):
        who = rng.sample(NAMES, 3)
        # Everyone always lives in the same city and has the same job, so even a model too small to copy
        # from the context can learn the answers; the unanswerable question asks about someone not mentioned.
        city, job = CITIES[NAMES.index(who[0]) % len(CITIES)], JOBS[NAMES.index(who[1]) % len(JOBS)]
        facts = [f"{who[0]} lives in {city}.", f"{who[1]} works as a {job}.", f"{who[2]} likes long walks."]
        rng.shuffle(facts)
        context = " ".join(facts)
        absent = rng.choice([n for n in NAMES if n not in who])
        qas = [
            ("Where does {} live?", who[0], city),
            ("What is the job of {}?", who[1], job),
            ("How old is {}?", absent, None),
        ]
        items = []
        for number, (template, name, answer) in enumerate(qas):
            answers = [] if answer is None else [{"text": answer, "answer_start": context.index(answer)}]
            items.append({"id": f"p{index}q{number}", "question": template.format(name), "answers": answers,
                          "is_impossible": answer is None})
        paragraphs.append({"context": context, "qas": items})
    return {"version": "v2.0", "data": [{"title": "People", "paragraphs": paragraphs}]}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(0)
    write_jsonl(HERE / "reviews-train.jsonl", reviews(480, rng))
    write_jsonl(HERE / "reviews-eval.jsonl", reviews(120, rng))
    write_jsonl(HERE / "council-train.jsonl", council(320, rng))
    write_jsonl(HERE / "council-eval.jsonl", council(32, rng))
    (HERE / "people-train.json").write_text(json.dumps(people(160, rng)), encoding="utf-8")
    (HERE / "people-eval.json").write_text(json.dumps(people(20, rng)), encoding="utf-8")


if __name__ == "__main__":
    main()
