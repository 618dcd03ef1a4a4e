"""Chat: dialogue / instruction fine-tuning of decoder-only models, the loss on the assistant's replies only.

Data is a `messages` column (a list of `{role, content}`: system, user, assistant, as many turns as wanted)
or its JSON text (as a CSV cell holds it), or `prompt` + `response` columns (one user and one assistant
turn). Conversations are rendered with a chat
template (`mechanisms/chat_template.py`: the tokenizer's, the recipe's `chat.template`, or a default) and
every assistant reply, with the end-of-turn token after it, is learned; system and user turns and the turn
headers are labelled -100. Evaluation: loss and perplexity over the reply tokens, then the last reply of each
eval conversation is generated from the conversation before it and scored by exact match (0–100, as QA)
and ROUGE-L.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from llmkit.errors import LlmkitError
from llmkit.section import Section
from llmkit.tasks.base import Evaluation, Prepared, Task, tokenize, with_perplexity
from llmkit.tasks.mechanisms.chat_template import ROLES, ChatTemplate, Message, token_labels

if TYPE_CHECKING:
    from collections.abc import Callable

    from datasets import Dataset, DatasetDict
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from llmkit.recipe import Recipe

FORMS = ("messages", "prompt", "response")


class ChatOptions(Section):
    """The recipe's `chat:` section."""

    template: str | None = Field(
        None,
        description="Jinja chat template for a tokenizer that has none (unset: the tokenizer's, else a default "
        "with `<|role|>` headers and the EOS token ending each turn).",
    )
    truncation: Literal["left", "right"] = Field(
        "left",
        description="Which end of a conversation longer than data.max_length is cut (left keeps the last turns).",
    )


class Chat(Task):
    name = "chat"
    roles = ()
    optional_roles = FORMS
    role_kinds: ClassVar[dict[str, str]] = {"messages": "messages"}
    target_roles = ("response",)
    auto_class_name = "AutoModelForCausalLM"
    mapping_name = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"
    needs = "a decoder-only model (GPT-2, Llama, ...)"
    options_class = ChatOptions
    #: only reply tokens carry loss, and their number differs from conversation to conversation
    loss_is_token_mean = True

    # ------------------------------------------------------------------ model

    def check_architecture(self, config: PretrainedConfig, recipe: Recipe) -> None:
        from llmkit.models import is_decoder_only, is_encoder_decoder, max_positions

        if not is_decoder_only(config):
            kind = "encoder-decoder" if is_encoder_decoder(config) else "encoder-only"
            raise LlmkitError(
                f"task `chat` needs {self.needs}; model type `{config.model_type}` "
                f"({recipe.model.name_or_path or 'model.from_config'}) is {kind}"
            )
        positions, new = max_positions(config), recipe.generation.max_new_tokens
        if positions is not None and new >= positions:
            raise LlmkitError(
                f"recipe field `generation.max_new_tokens`: {new} leaves no room for a prompt in the model's "
                f"{positions} positions"
            )

    def text_roles(self) -> tuple[str, ...]:
        """A `messages` column given as JSON text (a CSV cell) is text a trained tokenizer learns from too."""
        return FORMS

    # ------------------------------------------------------------------ data

    def preprocess(self, recipe: Recipe, raw: DatasetDict, tokenizer: PreTrainedTokenizerBase) -> Prepared:
        from datasets import Dataset

        chat = ChatTemplate.choose(tokenizer, recipe.options.template)
        features, conversations = {}, {}
        for split, dataset in raw.items():
            rows = conversations_of(dataset, split, recipe.data.columns)
            conversations[split] = Dataset.from_dict({"messages": rows, "row": list(range(len(rows)))})
            encode = self.encoder(chat, recipe, split)
            features[split] = tokenize(conversations[split], encode, recipe, f"Rendering {split} conversations")
            dropped = len(rows) - len(features[split])
            if dropped:
                print(
                    f"note: {dropped} {split} conversation(s) dropped: no assistant token is left within "
                    f"data.max_length = {recipe.data.max_length}",
                    file=sys.stderr,
                )
            if not len(features[split]):
                raise LlmkitError(
                    f"recipe field `data.max_length`: {recipe.data.max_length} tokens leave no assistant reply "
                    f"in any {split} conversation"
                )
        eval_examples = conversations["eval"].remove_columns("row") if "eval" in conversations else None
        return Prepared(features.get("train"), features.get("eval"), eval_examples)

    def encoder(self, chat: ChatTemplate, recipe: Recipe, split: str) -> Callable[[dict[str, list]], dict[str, list]]:
        """The batched map function: rendered text → tokens, labels on the replies, cut to data.max_length;
        a conversation without any reply token left is dropped."""
        limit, left = recipe.data.max_length, recipe.options.truncation == "left"

        def encode(batch: dict[str, list]) -> dict[str, list]:
            result: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
            for messages, row in zip(batch["messages"], batch["row"], strict=True):
                ids, labels = encode_conversation(chat, messages, f"{split} row {row}")
                if len(ids) > limit:
                    ids, labels = (ids[-limit:], labels[-limit:]) if left else (ids[:limit], labels[:limit])
                if all(label == -100 for label in labels):
                    continue
                result["input_ids"].append(ids)
                result["attention_mask"].append([1] * len(ids))
                result["labels"].append(labels)
            return result

        return encode

    def collator(
        self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None
    ) -> Callable[[list[dict]], Any]:
        """Pads per batch; padded label positions are -100 (GPT-2 pads with EOS, which is learned elsewhere)."""
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")

    def check_notes(self, recipe: Recipe, raw: DatasetDict) -> list[str]:
        side = "start" if recipe.options.truncation == "left" else "end"
        return [
            f"conversations longer than {recipe.data.max_length} tokens lose their {side} (chat.truncation); "
            "those left without a reply token are dropped",
            "learned: every assistant reply and the end-of-turn token after it; system and user turns are not",
        ]

    # ------------------------------------------------------------------ evaluation and inference

    def evaluate(
        self, trainer: Trainer, prepared: Prepared, recipe: Recipe, tokenizer: PreTrainedTokenizerBase
    ) -> Evaluation:
        """Loss and perplexity over the reply tokens, then each conversation's last reply generated and scored."""
        from llmkit.tasks.mechanisms.scores import exact_match, rouge

        metrics = with_perplexity(trainer.evaluate(prepared.eval))
        assert prepared.eval_examples is not None
        contexts, references = zip(*(split_last(m) for m in prepared.eval_examples["messages"]), strict=True)
        replies = self.generate(trainer.model, tokenizer, list(contexts), recipe, across_processes=True)
        matches = [exact_match(reply, str(gold)) for reply, gold in zip(replies, references, strict=True)]
        metrics["eval_exact_match"] = 100 * sum(matches) / len(matches)
        metrics["eval_rougeL"] = rouge(replies, [str(gold) for gold in references])["rougeL"]
        records = [
            {"messages": context, "reply": reply, "reference": gold}
            for context, reply, gold in zip(contexts, replies, references, strict=True)
        ]
        return Evaluation(metrics, records)

    def generate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        contexts: list[list[Message]],
        recipe: Recipe,
        across_processes: bool = False,
    ) -> list[str]:
        """The next assistant reply of each conversation, in batches; it ends at the end-of-turn token."""
        from llmkit.tasks.mechanisms.generation import generate

        chat = ChatTemplate.choose(tokenizer, recipe.options.template)
        texts = [chat.render(context, True, f"conversation {i}") for i, context in enumerate(contexts)]
        prompts = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
        prompts = [prompt[-recipe.data.max_length :] for prompt in prompts]
        if across_processes:
            replies = generate(model, tokenizer, prompts, recipe.generation, across_processes=True)
        else:
            replies = generate(model, tokenizer, prompts, recipe.generation)
        return [chat.clean_reply(reply) for reply in replies]

    def export_head(self) -> Any:
        """`llmkit export`: next-token logits, with position ids, generated through the graph."""
        from llmkit.export.heads import Head

        return Head(("logits",), position_ids=True, per_token=True, generates=True)

    def predict(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], recipe: Recipe
    ) -> list[dict[str, Any]]:
        """A reply to each input: `--text` is one user message, or a JSON object with `messages`; file rows
        hold `messages` or `prompt`. A conversation that ends with a reply has it as the `reference`."""
        contexts, references = [], []
        for number, row in enumerate(rows, 1):
            messages = predict_conversation(row, number)
            if messages[-1]["role"] == "assistant":
                context, reference = split_last(messages)
            else:
                context, reference = messages, None
            contexts.append(context)
            references.append(reference)
        replies = self.generate(model, tokenizer, contexts, recipe)
        return [
            {"messages": context, "reply": reply, **({"reference": gold} if gold is not None else {})}
            for context, reply, gold in zip(contexts, replies, references, strict=True)
        ]


# ---------------------------------------------------------------------- conversations


def conversations_of(dataset: Dataset, split: str, columns: dict[str, Any]) -> list[list[Message]]:
    """Every row as a checked conversation: from `messages`, or `prompt` + `response` as one exchange."""
    names = dataset.column_names
    if "messages" in names:
        column = str(columns.get("messages", "messages"))
        return [
            checked(value, f"data column `{column}` in {split} row {index}")
            for index, value in enumerate(dataset["messages"])
        ]
    if "prompt" in names and "response" in names:
        pairs = zip(dataset["prompt"], dataset["response"], strict=True)
        result = []
        for index, (prompt, response) in enumerate(pairs):
            for role, value in (("prompt", prompt), ("response", response)):
                if not isinstance(value, str) or not value.strip():
                    column = columns.get(role, role)
                    raise LlmkitError(f"data column `{column}` (role `{role}`) is empty in {split} row {index}")
            result.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
        return result
    missing = "`response`" if "prompt" in names else "`prompt`" if "response" in names else "`messages`"
    raise LlmkitError(
        f"task `chat` needs a data column `messages` (a list of {{role, content}}) or the columns `prompt` and "
        f"`response`; the {split} data has no {missing} (set `data.columns.messages`, or `.prompt` and `.response`)"
    )


def checked(value: Any, where: str, needs_reply: bool = True) -> list[Message]:
    """A conversation as a list of `{role, content}` with known roles and text contents, and (for training
    and evaluation) at least one assistant turn to learn. A JSON text of the list (as a CSV cell holds it) is
    read as the list."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise LlmkitError(
                f"{where}: expected a list of {{role, content}} messages, found text that is not JSON"
            ) from None
    if not isinstance(value, list) or not value:
        found = "an empty list" if isinstance(value, list) else type(value).__name__
        raise LlmkitError(f"{where}: expected a list of {{role, content}} messages, found {found}")
    messages = []
    for turn, message in enumerate(value):
        if not isinstance(message, dict):
            raise LlmkitError(f"{where}: message {turn} is {type(message).__name__}, not a {{role, content}} object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise LlmkitError(f"{where}: message {turn} has role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise LlmkitError(f"{where}: message {turn} ({role}) has content {content!r}, not a string")
        messages.append({"role": role, "content": content})
    if needs_reply and not any(m["role"] == "assistant" for m in messages):
        raise LlmkitError(f"{where}: the conversation has no assistant turn to learn")
    return messages


def encode_conversation(chat: ChatTemplate, messages: list[Message], where: str) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and their labels: reply tokens are learned, the rest is -100."""
    text = chat.render(messages, False, where)
    spans = chat.assistant_spans(messages, text, where)
    encoded = chat.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = list(encoded["input_ids"])
    return ids, token_labels(ids, [tuple(o) for o in encoded["offset_mapping"]], spans)


def split_last(messages: list[Message]) -> tuple[list[Message], str]:
    """The conversation before its last assistant turn, and that turn's content (the reference)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return list(messages[:last]), messages[last]["content"]


def predict_conversation(row: dict[str, Any], number: int) -> list[Message]:
    """A `predict` input as a conversation to continue."""
    where = f"predict input {number}"
    value = row.get("messages")
    text = row.get("text")
    if value is None and isinstance(text, str) and text.lstrip().startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and "messages" in parsed:
            value = parsed["messages"]
    if value is not None:
        messages = checked(value, f"{where}: field `messages`", needs_reply=False)
        if messages[-1]["role"] == "system" or (len(messages) == 1 and messages[0]["role"] == "assistant"):
            raise LlmkitError(f"{where}: field `messages` has no user message to reply to")
        return messages
    prompt = row.get("prompt", text)
    if not isinstance(prompt, str) or not prompt.strip():
        raise LlmkitError(f"{where}: give `messages` (a list of {{role, content}}) or a `prompt` / --text")
    messages = [{"role": "user", "content": prompt}]
    if isinstance(row.get("response"), str):
        messages.append({"role": "assistant", "content": row["response"]})
    return messages


TASK = Chat()
