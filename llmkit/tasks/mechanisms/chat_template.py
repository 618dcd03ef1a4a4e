"""Chat templates: which one a run uses, whether it renders, and where the assistant's words are in its text.

The template is the tokenizer's own (`tokenizer.chat_template`), else the recipe's `chat.template`, else
`DEFAULT_TEMPLATE` for models that ship none (GPT-2): each turn is `<|role|>` on a line, the content, then
the tokenizer's EOS token as the end of the turn, so a model that learns to end its replies learns to stop.
The chosen template is set on the tokenizer, which the run folder saves: `AutoTokenizer.from_pretrained(run)`
renders conversations exactly as training did.

Assistant spans are found in the rendered text, not assumed from a template's layout: the conversation is
rendered up to each assistant turn (with the generation prompt) to find where the reply starts, the reply is
searched from there, and the end-of-turn text the template writes after a reply joins the span.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
PROBE_USER, PROBE_REPLY = "Probe question 1", "Probe reply 2"

Message = dict[str, str]


@dataclass(frozen=True)
class ChatTemplate:
    """A checked template and the texts it writes around turns (to cut them off generated replies)."""

    tokenizer: Any
    template: str
    source: str  # how errors name it: "recipe field `chat.template`" or "the tokenizer's chat template"
    end_of_turn: str  # text the template writes right after a reply ("<|endoftext|>", "<|im_end|>")
    markers: tuple[str, ...]  # the turn headers ("<|user|>"), cut off a reply that runs into the next turn

    @classmethod
    def choose(cls, tokenizer: PreTrainedTokenizerBase, recipe_template: str | None) -> ChatTemplate:
        """The recipe's template when it gives one, else the tokenizer's, else the default; set on the tokenizer
        so the run folder saves the template that training used."""
        if recipe_template is not None:
            template, source = recipe_template, "recipe field `chat.template`"
        elif getattr(tokenizer, "chat_template", None):
            template, source = str(tokenizer.chat_template), "the tokenizer's chat template"
        else:
            template, source = DEFAULT_TEMPLATE, "the default chat template"
        if not getattr(tokenizer, "is_fast", False):
            raise LlmkitError("task `chat` needs a fast tokenizer (one with a tokenizer.json) to find the replies")
        if tokenizer.eos_token_id is None:
            raise LlmkitError("task `chat` needs a tokenizer with an EOS token: it ends the assistant's turns")
        probe = [{"role": "user", "content": PROBE_USER}, {"role": "assistant", "content": PROBE_REPLY}]
        text = _render(tokenizer, template, probe, False, source)
        if PROBE_USER not in text or PROBE_REPLY not in text:
            if PROBE_REPLY.lower() in text.lower():
                raise LlmkitError(
                    f"{source} changes the messages' contents (a filter such as `upper`?): the replies must appear "
                    "as written, so that the tokens to learn can be found; render message['content'] unchanged"
                )
            raise LlmkitError(f"{source} does not render the messages' contents (it must use message['content'])")
        end_of_turn = text[text.index(PROBE_REPLY) + len(PROBE_REPLY) :].strip()
        tokenizer.chat_template = template
        chat = cls(tokenizer, template, source, end_of_turn, ())
        markers = [chat.header(role) for role in ROLES]
        return cls(tokenizer, template, source, end_of_turn, tuple(m for m in markers if m))

    def render(self, messages: list[Message], generation_prompt: bool = False, where: str = "") -> str:
        return _render(self.tokenizer, self.template, messages, generation_prompt, self.source, where)

    def header(self, role: str) -> str:
        """The text the template writes before a turn of this role ("" when it cannot be told)."""
        try:
            text = self.render([{"role": role, "content": PROBE_USER}])
        except LlmkitError:
            return ""
        return text.split(PROBE_USER)[0].strip()

    def assistant_spans(self, messages: list[Message], text: str, where: str) -> list[tuple[int, int]]:
        """Character spans of every assistant reply in `text` (the rendered conversation), each with the
        end-of-turn text that follows it."""
        spans, cursor = [], 0
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            for generation_prompt in (True, False):
                before = self.render(messages[:index], generation_prompt, where) if index else ""
                if text.startswith(before) and len(before) >= cursor:
                    cursor = len(before)
                    break
            start = text.find(message["content"], cursor)
            if start < 0:
                raise LlmkitError(f"{self.source} does not render assistant turn {index} of {where} as given")
            end = start + len(message["content"])
            rest = text[end:]
            if self.end_of_turn and rest.lstrip(" ").startswith(self.end_of_turn):
                end += len(rest) - len(rest.lstrip(" ")) + len(self.end_of_turn)
            spans.append((start, end))
            cursor = end
        return spans

    def clean_reply(self, text: str) -> str:
        """A generated reply without what follows the end of its turn (a next turn the model went on to write)."""
        for stop in (self.end_of_turn, *self.markers):
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text.strip()


def _render(
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    messages: list[Message],
    generation_prompt: bool,
    source: str,
    where: str = "",
) -> str:
    """`apply_chat_template` as text; a template error is one line naming the template (and the row)."""
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        place = f" for {where}" if where else ""
        raise LlmkitError(f"{source} does not render{place}: {message[:200]}") from None
    return str(text)


def token_labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Each token's own id where it overlaps an assistant span, -100 elsewhere (system and user turns, headers)."""
    labels = []
    for token, (start, end) in zip(ids, offsets, strict=True):
        inside = any(start < span_end and end > span_start for span_start, span_end in spans)
        labels.append(token if inside else -100)
    return labels
