"""Chat: assistant-only labels token by token, the prompt/response layout, the chat template saved with the model
and read back by plain transformers, one-line data and template errors, the CI recipe end to end (gates,
predictions, eval --check, predict), and LoRA + merge keeping the replies."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmkit.errors import LlmkitError
from llmkit.recipe import load_recipe
from tests.conftest import REPO
from tests.tiny_recipe import invoke, one_thread, write_recipe

RECIPE = REPO / "recipes/ci/tiny-gpt2-chat.yaml"
DATA = REPO / "recipes/ci/data"
EOS = "<|endoftext|>"
THREE_TURNS = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital is Paris."},
    {"role": "user", "content": "What colour is snow?"},
    {"role": "assistant", "content": "It is white."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
]


@pytest.fixture(scope="module")
def tokenizer():
    from llmkit.models import train_tokenizer
    from llmkit.recipe import TokenizerTrainSection

    texts = [json.loads(line)["messages"] for line in (DATA / "chat-train.jsonl").read_text().splitlines()]
    return train_tokenizer(TokenizerTrainSection(kind="bpe", vocab_size=400, min_frequency=1), texts)


def chat_recipe(*overrides: str):
    return load_recipe(RECIPE, ["training.output_dir=unused", *overrides])


def preprocess(rows: dict[str, list], tokenizer, *overrides: str):
    from datasets import Dataset, DatasetDict

    from llmkit.tasks import TASKS

    raw = DatasetDict({"train": Dataset.from_dict(rows)})
    return TASKS["chat"].preprocess(chat_recipe(*overrides), raw, tokenizer).train


def expected_tokens(messages: list[dict[str, str]], tokenizer) -> tuple[list[int], list[int]]:
    """The default template built piece by piece: `<|role|>\\n` content EOS `\\n`; replies + EOS learned."""
    ids: list[int] = []
    labels: list[int] = []
    for message in messages:
        learned = message["role"] == "assistant"
        for piece, label in ((f"<|{message['role']}|>\n", False), (message["content"], learned), (EOS, learned)):
            piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            ids += piece_ids
            labels += piece_ids if label else [-100] * len(piece_ids)
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        ids, labels = ids + newline, labels + [-100] * len(newline)
    return ids, labels


# --------------------------------------------------------------------------- labels and layouts


def test_every_assistant_turn_is_learned_with_its_eos_and_nothing_else(tokenizer) -> None:
    feature = preprocess({"messages": [THREE_TURNS]}, tokenizer)[0]
    ids, labels = expected_tokens(THREE_TURNS, tokenizer)
    assert feature["input_ids"] == ids
    assert feature["labels"] == labels  # token by token: replies and their EOS, never system/user/headers
    runs, run = [], []
    for token, label in zip(feature["input_ids"], feature["labels"], strict=True):
        if label != -100:
            assert label == token
            run.append(token)
        elif run:
            runs.append(run)
            run = []
    assert [tokenizer.decode(r) for r in runs] == [m["content"] + EOS for m in THREE_TURNS if m["role"] == "assistant"]
    assert all(r[-1] == tokenizer.eos_token_id for r in runs)  # each reply ends in EOS: the model learns to stop


def test_prompt_and_response_columns_are_one_user_and_one_assistant_turn(tokenizer) -> None:
    feature = preprocess({"prompt": ["What colour is coal?"], "response": ["It is black."]}, tokenizer)[0]
    conversation = [
        {"role": "user", "content": "What colour is coal?"},
        {"role": "assistant", "content": "It is black."},
    ]
    assert (feature["input_ids"], feature["labels"]) == expected_tokens(conversation, tokenizer)


def test_long_conversations_keep_their_last_reply_and_unlearnable_ones_are_dropped(tokenizer, capfd) -> None:
    long = [{"role": "user", "content": "What is the capital of France? " * 30}, THREE_TURNS[2]]
    rows = {"messages": [THREE_TURNS, long]}
    left = preprocess(rows, tokenizer, "data.max_length=40")
    assert len(left) == 2 and all(len(f["input_ids"]) == 40 for f in left)
    kept = [label for label in left[1]["labels"] if label != -100]
    assert tokenizer.decode(kept) == "The capital is Paris." + EOS
    right = preprocess(rows, tokenizer, "data.max_length=40", "chat.truncation=right")
    assert len(right) == 1  # the long question fills the window: nothing to learn is left
    assert "1 train conversation(s) dropped" in capfd.readouterr().err


def test_generation_prompt_is_the_training_text_before_the_last_reply(tokenizer, monkeypatch) -> None:
    import llmkit.tasks.mechanisms.generation as generation
    from llmkit.tasks import TASKS

    seen: list[list[int]] = []
    monkeypatch.setattr(generation, "generate", lambda m, t, prompts, s: seen.extend(prompts) or ["x"] * len(prompts))
    feature = preprocess({"messages": [THREE_TURNS]}, tokenizer)[0]
    records = TASKS["chat"].predict(None, tokenizer, [{"messages": THREE_TURNS}], chat_recipe())
    start = len(feature["labels"]) - 1 - feature["labels"][::-1].index(-100, 2)  # last reply's first token - 1
    assert seen == [feature["input_ids"][: start + 1]]
    assert records == [{"messages": THREE_TURNS[:-1], "reply": "x", "reference": "Hello! How can I help?"}]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ([{"role": "user", "content": "hi"}], "no assistant turn"),
        ([{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}], "role 'robot'"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}], "not a string"),
        ("not json", "not JSON"),
        ({"role": "user"}, "expected a list"),
    ],
)
def test_bad_conversations_are_one_line_naming_column_split_and_row(value: Any, words: str) -> None:
    from llmkit.tasks.chat import checked

    with pytest.raises(LlmkitError, match=words) as caught:
        checked(value, "data column `messages` in train row 4")
    assert "train row 4" in str(caught.value) and "\n" not in str(caught.value)


def test_conversation_without_a_reply_stops_check_naming_the_row(tmp_path: Path) -> None:
    rows = [line for line in (DATA / "chat-eval.jsonl").read_text().splitlines()[:3]]
    rows.append(json.dumps({"messages": [{"role": "user", "content": "Hello!"}]}))
    (tmp_path / "bad.jsonl").write_text("\n".join(rows) + "\n")
    result = invoke("check", RECIPE, f"data.eval={tmp_path / 'bad.jsonl'}")
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0, result.output
    assert "`messages` in eval row 3" in result.output and "no assistant turn" in result.output


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{% for message in messages %}{{ message.content }", "does not render"),
        ("hello", "contents"),
        (
            "{% for m in messages %}{{ m.role }}: {{ m.content | upper }}\n{% endfor %}",
            "changes the messages' contents",
        ),
    ],
)
def test_recipe_template_that_does_not_render_is_one_line(template: str, words: str) -> None:
    result = invoke("check", RECIPE, f"chat.template={json.dumps(template)}")
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0 and "chat.template" in result.output and words in result.output


def test_encoder_only_model_is_refused(tmp_path: Path) -> None:
    model = "model.from_config={model_type: bert, num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2}"
    result = invoke("check", RECIPE, model)
    assert result.exit_code == 2 and "encoder-only" in result.output and "chat" in result.output, result.output


def test_recipe_template_is_saved_and_plain_transformers_renders_the_same(tokenizer, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from llmkit.tasks.mechanisms.chat_template import ChatTemplate

    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
    feature = preprocess({"messages": [THREE_TURNS]}, tokenizer, f"chat.template={json.dumps(template)}")[0]
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_template == template
    assert reloaded.apply_chat_template(THREE_TURNS, tokenize=True, return_dict=False) == feature["input_ids"]
    tokenizer.chat_template = None  # the module's tokenizer is shared
    assert ChatTemplate.choose(tokenizer, None).source == "the default chat template"
    tokenizer.chat_template = None


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def chat_run(ci_run: Callable[[str], Path]) -> Path:
    return ci_run("tiny-gpt2-chat")


def test_ci_recipe_meets_its_gates(chat_run: Path) -> None:
    from llmkit.recipe import meets

    metrics = json.loads((chat_run / "metrics.json").read_text())
    for name, bar in load_recipe(RECIPE).expect.items():
        assert meets(metrics[name], bar), (name, metrics[name], bar)
    assert 0 <= metrics["eval_exact_match"] <= 100 and 0 <= metrics["eval_rougeL"] <= 100


def test_predictions_hold_the_context_the_reply_and_the_reference(chat_run: Path) -> None:
    from llmkit.tasks.mechanisms.scores import exact_match

    records = [json.loads(line) for line in (chat_run / "predictions.jsonl").read_text().splitlines()]
    gold = [json.loads(line)["messages"] for line in (DATA / "chat-eval.jsonl").read_text().splitlines()]
    assert len(records) == len(gold)
    for record, conversation in zip(records, gold, strict=True):
        assert set(record) == {"messages", "reply", "reference"}
        assert record["messages"] == conversation[:-1] and record["reference"] == conversation[-1]["content"]
    metrics = json.loads((chat_run / "metrics.json").read_text())
    again = 100 * sum(exact_match(r["reply"], r["reference"]) for r in records) / len(records)
    assert again == pytest.approx(metrics["eval_exact_match"])  # the file is what was scored


def test_saved_template_renders_as_training_did(chat_run: Path, tokenizer) -> None:
    from transformers import AutoTokenizer

    from llmkit.tasks.mechanisms.chat_template import DEFAULT_TEMPLATE

    reloaded = AutoTokenizer.from_pretrained(chat_run)
    assert reloaded.chat_template == DEFAULT_TEMPLATE
    text = reloaded.apply_chat_template(THREE_TURNS, tokenize=False)
    assert text == "".join(f"<|{m['role']}|>\n{m['content']}{EOS}\n" for m in THREE_TURNS)
    prompt = reloaded.apply_chat_template(THREE_TURNS[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")


def test_predict_text_gives_a_reply_that_stops(chat_run: Path) -> None:
    conversation = json.dumps({"messages": [THREE_TURNS[0], {"role": "user", "content": "What colour is grass?"}]})
    result = invoke("predict", chat_run, "--text", "What is the capital of Japan?", "--text", conversation)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["reply"] for r in records] == ["The capital is Tokyo.", "It is green."]
    assert records[0]["messages"] == [{"role": "user", "content": "What is the capital of Japan?"}]


def test_eval_check_of_the_run_meets_the_gates(chat_run: Path) -> None:
    with one_thread():
        result = invoke("eval", RECIPE, "--check", "--checkpoint", chat_run)
    assert result.exit_code == 0, result.output
    assert "expectations met" in result.output


def test_lora_on_the_chat_model_then_merge_keeps_the_replies(chat_run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    content = load_recipe(RECIPE).model_dump(mode="json", exclude_none=True)
    content.pop("expect")
    content["model"] = {"name_or_path": str(chat_run)}
    content["tokenizer"] = {"name_or_path": str(chat_run)}
    content["data"].update(train=str(DATA / "chat-pairs-train.jsonl"), eval=str(DATA / "chat-pairs-eval.jsonl"))
    content["training"].update(output_dir=str(tmp_path / "lora"), max_steps=8, learning_rate=1e-2, save_strategy="no")
    content["peft"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    with one_thread():
        result = invoke("finetune", write_recipe(tmp_path / "lora.yaml", content))
        assert result.exit_code == 0, result.output
        weights = load_file(tmp_path / "lora" / "adapter_model.safetensors")
        assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k), "the adapter never trained"
        result = invoke("merge", tmp_path / "lora", tmp_path / "merged")
        assert result.exit_code == 0, result.output
        texts = ["What is the capital of Peru?", "What is the opposite of hot?", "Hello!"]
        replies = []
        for folder in (tmp_path / "lora", tmp_path / "merged"):
            result = invoke("predict", folder, *[arg for text in texts for arg in ("--text", text)])
            assert result.exit_code == 0, result.output
            replies.append([json.loads(line)["reply"] for line in result.stdout.splitlines() if line.startswith("{")])
    assert replies[0] == replies[1] and all(replies[0])
