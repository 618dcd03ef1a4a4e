"""Regenerate the tiny chat data of the CI recipe (deterministic; `python recipes/ci/data/generate_chat.py`).

- chat-{train,eval}.jsonl: conversations in the `messages` layout (the training file holds each list as JSON
  text, as a CSV cell would, so that a tokenizer trained on data.train's text learns the conversations' words;
  the eval file holds plain lists), 1 to 3 exchanges, half of them opened by a
  system message. Each user turn asks one of a few things and the assistant's reply follows a fixed rule: the
  capital of a country, the colour of a thing, the opposite of a word, or a greeting. A tiny model can
  learn the rules, and must learn to end its reply, so exact match and ROUGE-L fail when labels, the template
  or the stopping are wrong.
- chat-pairs-{train,eval}.jsonl: the same rules as single `prompt` / `response` exchanges.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
CAPITALS = {
    "France": "Paris",
    "Spain": "Madrid",
    "Italy": "Rome",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Germany": "Berlin",
    "Portugal": "Lisbon",
    "Ireland": "Dublin",
    "Korea": "Seoul",
    "Ecuador": "Quito",
}
COLOURS = {
    "a banana": "yellow",
    "grass": "green",
    "snow": "white",
    "the sky": "blue",
    "coal": "black",
    "a tomato": "red",
    "a plum": "purple",
    "a carrot": "orange",
}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "old": "new", "dark": "light", "wet": "dry"}
SYSTEMS = ["You are a helpful assistant.", "Answer briefly.", "You are a friendly bot."]


def exchange(rng: random.Random) -> tuple[str, str]:
    """One user question and the reply its rule gives."""
    kind = rng.choice(["capital", "capital", "colour", "colour", "opposite", "opposite", "greeting"])
    if kind == "capital":
        country = rng.choice(sorted(CAPITALS))
        question = rng.choice(["What is the capital of {}?", "Name the capital of {}."]).format(country)
        return question, f"The capital is {CAPITALS[country]}."
    if kind == "colour":
        thing = rng.choice(sorted(COLOURS))
        return f"What colour is {thing}?", f"It is {COLOURS[thing]}."
    if kind == "opposite":
        word = rng.choice(sorted(OPPOSITES))
        return f"What is the opposite of {word}?", f"The opposite of {word} is {OPPOSITES[word]}."
    return rng.choice(["Hello!", "Hi there!", "Good morning!"]), "Hello! How can I help?"


def conversation(rng: random.Random, as_text: bool) -> dict:
    messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.5 else []
    for _ in range(rng.choice([1, 2, 2, 3])):
        question, reply = exchange(rng)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    return {"messages": json.dumps(messages) if as_text else messages}


def pair(rng: random.Random) -> dict:
    question, reply = exchange(rng)
    return {"prompt": question, "response": reply}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(11)
    write_jsonl(HERE / "chat-train.jsonl", [conversation(rng, True) for _ in range(480)])
    write_jsonl(HERE / "chat-eval.jsonl", [conversation(rng, False) for _ in range(48)])
    write_jsonl(HERE / "chat-pairs-train.jsonl", [pair(rng) for _ in range(240)])
    write_jsonl(HERE / "chat-pairs-eval.jsonl", [pair(rng) for _ in range(32)])


if __name__ == "__main__":
    main()
