"""Learning to write a target text from a prompt: the mechanism shared by summarization and generative QA.

Decoder-only models (GPT-2) see one sequence, `prompt + target + EOS`, and learn only the target: every
prompt token is labelled -100. Encoder-decoder models (T5, BART) read the prompt and learn `target + EOS`
as decoder labels. In both, the prompt is `[special] task-prefix body tail separator`, where only the body
(the document, the context) is cut to fit: the tail (the question) and the separator always survive, and
so does the start of the target. `PromptEncoder.prompts` builds the prompt for training, evaluation and
`predict` alike, so a model is asked exactly what it was taught.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from llmkit.errors import LlmkitError
from llmkit.section import Section
from llmkit.tasks.base import Evaluation, Prepared, Task, require_nonempty_text, tokenize

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from llmkit.recipe import Recipe

SEQ2SEQ_MAPPING = "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"
CAUSAL_MAPPING = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"


def special_affixes(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after a text (GPT-2: none; T5: `</s>` after)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    return [], []


@dataclass(frozen=True)
class PromptEncoder:
    """Token ids of prompts and targets for one tokenizer, one separator and one length budget."""

    tokenizer: Any
    encoder_decoder: bool
    head: list[int]  # leading special tokens + task prefix ("summarize: ")
    target_head: list[int]  # an encoder-decoder's labels start like the tokenizer's texts (BART: <s>)
    separator: list[int]
    tail_specials: list[int]  # encoder inputs end with the tokenizer's closing specials
    eos: int
    separator_text: str
    max_length: int
    max_target_length: int

    @classmethod
    def create(
        cls, tokenizer: PreTrainedTokenizerBase, recipe: Recipe, separator: str, task_prefix: str, encoder_decoder: bool
    ) -> PromptEncoder:
        if tokenizer.eos_token_id is None:
            raise LlmkitError("the tokenizer has no EOS token, so the model could not learn where a target ends")
        before, after = special_affixes(tokenizer)
        prefix = tokenizer(task_prefix, add_special_tokens=False)["input_ids"] if task_prefix else []
        encoder = cls(
            tokenizer=tokenizer,
            encoder_decoder=encoder_decoder,
            head=before + prefix,
            target_head=before if encoder_decoder else [],
            separator=tokenizer(separator, add_special_tokens=False)["input_ids"] if separator else [],
            tail_specials=after if encoder_decoder else [],
            eos=tokenizer.eos_token_id,
            separator_text=separator,
            max_length=recipe.data.max_length,
            max_target_length=recipe.options.max_target_length,
        )
        encoder.check_room(task_prefix)
        return encoder

    def check_room(self, task_prefix: str) -> None:
        """The prompt's fixed part (special tokens, task prefix, separator) must leave the text most of the
        budget: a long prefix under a short `data.max_length` would silently cut every text to a few tokens."""
        fixed = len(self.head) + len(self.separator) + len(self.tail_specials)
        left = self.prompt_budget - fixed
        if left < max(8, self.prompt_budget // 4):
            what = f"the task prefix {task_prefix!r} and the separator" if task_prefix else "the separator"
            raise LlmkitError(
                f"recipe field `data.max_length`: {what} take {fixed} of the {self.prompt_budget} prompt tokens it "
                f"allows, leaving {max(left, 0)} for the text; raise data.max_length (or shorten the prefix)"
            )

    @property
    def prompt_budget(self) -> int:
        """Prompt tokens allowed: a decoder's sequence also holds the target and its EOS."""
        return self.max_length if self.encoder_decoder else self.max_length - self.max_target_length - 1

    def prompts(self, bodies: list[str], tails: list[str]) -> list[list[int]]:
        """`head + body + tail + separator`, the body cut from its end so the whole fits the budget."""
        body_ids = self._encode(bodies)
        tail_ids = self._encode(tails) if any(tails) else [[] for _ in tails]
        fixed = len(self.head) + len(self.separator) + len(self.tail_specials)
        result = []
        for body, tail in zip(body_ids, tail_ids, strict=True):
            room = self.prompt_budget - fixed
            tail = tail[: max(room, 0)]
            body = body[: max(room - len(tail), 0)]
            result.append(self.head + body + tail + self.separator + self.tail_specials)
        return result

    def targets(self, texts: list[str]) -> list[list[int]]:
        """Target ids, at most `max_target_length` of them, then EOS (the model must learn to stop)."""
        glue = "" if not self.separator_text or self.separator_text[-1].isspace() else " "
        cleaned = [(glue + text.strip()) if text.strip() else "" for text in texts]
        return [[*self.target_head, *ids[: self.max_target_length], self.eos] for ids in self._encode(cleaned)]

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def features(self, prompts: list[list[int]], targets: list[list[int]]) -> dict[str, list]:
        """Model inputs: decoder = prompt + target with the prompt masked; encoder-decoder = prompt → target."""
        if self.encoder_decoder:
            inputs, labels = prompts, targets
        else:
            inputs = [p + t for p, t in zip(prompts, targets, strict=True)]
            labels = [[-100] * len(p) + t for p, t in zip(prompts, targets, strict=True)]
        return {"input_ids": inputs, "attention_mask": [[1] * len(ids) for ids in inputs], "labels": labels}


class PromptOptions(Section):
    """Options of every prompt → target task (its recipe section, e.g. `summarization:`)."""

    prompt_separator: str | None = Field(
        None, description="Text between prompt and target for decoders (unset: the task's own, e.g. \\nTL;DR:)."
    )
    max_target_length: int = Field(128, ge=1, description="Tokens kept of the target text.")


class PromptToTarget(Task):
    """A task that writes text: decoder-only or encoder-decoder, chosen by the model's architecture.

    Subclasses say how a row becomes `(body, tail)` and a target, and how predictions are scored.
    """

    #: text between prompt and target for decoder-only models (a recipe's `<task>.prompt_separator` wins)
    default_separator: ClassVar[str]
    #: the role `predict --text` fills
    text_role: ClassVar[str]
    #: the role that holds the text to learn (not needed for predict)
    target_role: ClassVar[str]
    options_class = PromptOptions
    packing_choices = (True, False)
    #: only the target tokens carry loss, and their number differs from row to row
    loss_is_token_mean = True

    def __init__(self, encoder_decoder: bool = False, task_prefix: str = "") -> None:
        self.encoder_decoder = encoder_decoder
        self.task_prefix = task_prefix
        self.auto_class_name = "AutoModelForSeq2SeqLM" if encoder_decoder else "AutoModelForCausalLM"
        self.mapping_name = SEQ2SEQ_MAPPING if encoder_decoder else CAUSAL_MAPPING

    # ------------------------------------------------------------------ what subclasses define

    def prompt_parts(self, batch: dict[str, list]) -> tuple[list[str], list[str]]:
        """(bodies, tails) of a batch of rows: the body may be cut, the tail may not."""
        raise NotImplementedError

    def target_texts(self, batch: dict[str, list], split: str) -> list[str]:
        raise NotImplementedError

    def score(self, predictions: list[str], examples: Dataset, recipe: Recipe) -> dict[str, float]:
        raise NotImplementedError

    def records(self, predictions: list[str], examples: Dataset) -> list[dict[str, Any]]:
        raise NotImplementedError

    # ------------------------------------------------------------------ model

    def specialize(self, config: PretrainedConfig, recipe: Recipe) -> Task:
        from llmkit.models import is_decoder_only, is_encoder_decoder

        if is_encoder_decoder(config):
            params = getattr(config, "task_specific_params", None) or {}
            prefix = str((params.get(self.name) or {}).get("prefix", ""))
            return type(self)(encoder_decoder=True, task_prefix=prefix)
        if is_decoder_only(config):
            return type(self)()
        raise LlmkitError(
            f"task `{self.name}` needs a model that writes text: decoder-only (GPT-2) or encoder-decoder (T5, BART); "
            f"model type `{config.model_type}` ({recipe.model.name_or_path or 'model.from_config'}) is encoder-only"
        )

    def check_architecture(self, config: PretrainedConfig, recipe: Recipe) -> None:
        from llmkit.models import max_positions

        super().check_architecture(config, recipe)
        if self.encoder_decoder:
            return
        max_length, max_target = recipe.data.max_length, recipe.options.max_target_length
        if max_target + 1 >= max_length - 8:
            raise LlmkitError(
                f"recipe field `{self.name}.max_target_length`: {max_target} leaves no room for the prompt in "
                f"data.max_length = {max_length} (a decoder's sequence holds prompt, target and EOS)"
            )
        positions = max_positions(config)
        longest = max_length - max_target - 1 + recipe.generation.max_new_tokens
        if positions is not None and longest > positions:
            raise LlmkitError(
                f"recipe field `generation.max_new_tokens`: {recipe.generation.max_new_tokens} new tokens after a "
                f"prompt of up to {max_length - max_target - 1} exceed the model's {positions} "
                "positions; lower it or data.max_length"
            )

    def trainer_class(self) -> type[Trainer]:
        """Seq2SeqTrainer for encoder-decoders; for decoders a Trainer whose model also takes packed batches
        (`data.packing: true`; any other batch reaches the model unchanged)."""
        from transformers import Seq2SeqTrainer, Trainer

        from llmkit.tasks.mechanisms.padding_free import padding_free_trainer

        return Seq2SeqTrainer if self.encoder_decoder else padding_free_trainer(Trainer)

    def encoder(self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> PromptEncoder:
        separator = recipe.options.prompt_separator
        if separator is None:
            separator = "" if self.encoder_decoder else self.default_separator
        return PromptEncoder.create(tokenizer, recipe, separator, self.task_prefix, self.encoder_decoder)

    # ------------------------------------------------------------------ data

    def preprocess(self, recipe: Recipe, raw: DatasetDict, tokenizer: PreTrainedTokenizerBase) -> Prepared:
        encoder = self.encoder(recipe, tokenizer)
        features = {}
        for split, dataset in raw.items():
            self.validate(dataset, split)

            def encode(batch: dict[str, list], split: str = split) -> dict[str, list]:
                bodies, tails = self.prompt_parts(batch)
                return encoder.features(
                    encoder.prompts(bodies, tails), encoder.targets(self.target_texts(batch, split))
                )

            features[split] = tokenize(dataset, encode, recipe, f"Tokenizing {split} prompts and targets")
        return Prepared(features.get("train"), features.get("eval"), raw.get("eval"))

    def validate(self, dataset: Dataset, split: str) -> None:
        """Every prompt and target cell must be text: an empty one would silently train on nothing."""
        for role in self.roles:
            require_nonempty_text(dataset, role, split)

    def collator(
        self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None
    ) -> Callable[[list[dict]], Any]:
        """Pads per batch; padded label positions are -100, so only real target tokens carry loss. For an
        encoder-decoder being trained, the batch also holds the decoder inputs (the labels shifted right, as
        the model makes them): the loss is then computed from the logits without handing the model labels."""
        from transformers import DataCollatorForSeq2Seq

        from llmkit.tasks.mechanisms.padding_free import ExamplePacker, fine_tuning_packs, mask_style

        if fine_tuning_packs(recipe, self.name):
            if self.encoder_decoder:
                raise LlmkitError(
                    f"recipe field `data.packing`: packing needs a decoder-only model; task `{self.name}` on an "
                    "encoder-decoder reads the prompt in its encoder: set data.packing: false"
                )
            return ExamplePacker(tokenizer, causal=True, example_labels=False, style=mask_style(model))
        decoder_inputs = model if self.encoder_decoder else None
        return DataCollatorForSeq2Seq(tokenizer, model=decoder_inputs, label_pad_token_id=-100, return_tensors="pt")

    def check_notes(self, recipe: Recipe, raw: DatasetDict) -> list[str]:
        from llmkit.tasks.mechanisms.padding_free import fine_tuning_packs

        notes = super().check_notes(recipe, raw)
        if fine_tuning_packs(recipe, self.name):
            notes.append("packing: each batch's examples share rows, each attending only to itself (no padding)")
        return notes

    def render_example(self, batch: dict[str, Any], index: int, tokenizer: PreTrainedTokenizerBase, config: Any) -> str:
        if "packed_spans" in batch:  # data.packing: show example `index` alone
            from llmkit.tasks.mechanisms.padding_free import unpacked_view

            batch, index = unpacked_view(batch, index), 0
        return super().render_example(batch, index, tokenizer, config)

    # ------------------------------------------------------------------ evaluation and inference

    def generate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch: dict[str, list],
        recipe: Recipe,
        across_processes: bool = False,
    ) -> list[str]:
        """Write a target for each row, in batches (only generated ids are kept, never logits)."""
        from llmkit.tasks.mechanisms.generation import generate

        bodies, tails = self.prompt_parts(batch)
        prompts = self.encoder(recipe, tokenizer).prompts(bodies, tails)
        if across_processes:
            return generate(model, tokenizer, prompts, recipe.generation, across_processes=True)
        return generate(model, tokenizer, prompts, recipe.generation)

    def evaluate(
        self, trainer: Trainer, prepared: Prepared, recipe: Recipe, tokenizer: PreTrainedTokenizerBase
    ) -> Evaluation:
        """Loss on the targets (the Trainer's loop, no logits kept), then generated texts scored; in a
        multi-process run each process writes its share of the texts and every process scores all of them."""
        metrics = trainer.evaluate(prepared.eval)
        examples = prepared.eval_examples
        assert examples is not None
        predictions = self.generate(trainer.model, tokenizer, examples.to_dict(), recipe, across_processes=True)
        metrics.update({f"eval_{name}": value for name, value in self.score(predictions, examples, recipe).items()})
        return Evaluation(metrics, self.records(predictions, examples))

    def export_head(self) -> Any:
        """`llmkit export`: a decoder's next-token logits (an encoder-decoder's two graphs are not exported)."""
        from llmkit.export.heads import Head

        if self.encoder_decoder:
            return None
        return Head(("logits",), position_ids=True, per_token=True, generates=True)

    def predict(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], recipe: Recipe
    ) -> list[dict[str, Any]]:
        from datasets import Dataset

        rows = [self.input_row(row) for row in rows]
        examples = Dataset.from_list(rows)
        return self.records(self.generate(model, tokenizer, examples.to_dict(), recipe), examples)

    def input_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A `predict` input as task roles: `--text` fills `text_role`; missing roles are an error."""
        if "text" in row and self.text_role not in row:
            row = {**row, self.text_role: row["text"]}
        missing = [role for role in self.roles if role not in row and role != self.target_role]
        if missing:
            raise LlmkitError(f"predict input needs the field(s) {', '.join(missing)} (give a .jsonl with them)")
        return row
