"""Question answering on SQuAD-format data (`question`, `context`, `answers: {text, answer_start}`).

Two methods, picked by `qa.mode` (default `auto`: by the model's architecture):
- extractive (`extractive.py`), for encoders (BERT family): the model points at the answer's first and last
  token. Long contexts become overlapping windows (`doc_stride`); the best span over all windows of a
  question wins (`n_best_size` candidates, at most `max_answer_length` tokens); with SQuAD v2 data, "no
  answer" wins when the [CLS] score beats the best span by more than `null_score_diff_threshold`.
- generative (`generative.py`), for decoders (GPT-2) and encoder-decoders (T5): `context + "\nQuestion: ..."
  + "\nAnswer:"` → the answer text, through the prompt → target mechanism shared with summarization.
Both are scored with the official SQuAD exact match / F1 (`answers.py`; v2 breakdown when some questions have
no answer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from llmkit.errors import LlmkitError
from llmkit.tasks.base import Task
from llmkit.tasks.mechanisms.prompting import PromptOptions
from llmkit.tasks.qa.answers import SquadFiles
from llmkit.tasks.qa.extractive import ExtractiveQA
from llmkit.tasks.qa.generative import GenerativeQA

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from llmkit.recipe import Recipe


class QAOptions(PromptOptions):
    """`qa:` in a recipe."""

    mode: Literal["auto", "extractive", "generative"] = Field(
        "auto", description="Extractive spans (encoders) or generated answers (decoders, encoder-decoders); auto picks."
    )
    doc_stride: int | None = Field(
        None, ge=1, description="Extractive: overlap between windows of a long context (unset: max_length / 4)."
    )
    max_answer_length: int = Field(30, ge=1, description="Extractive: longest answer span in tokens.")
    n_best_size: int = Field(20, ge=1, description="Extractive: start/end candidates considered.")
    version_2_with_negative: bool = Field(
        False, description="Some questions have no answer (SQuAD v2); on by itself when eval data has some."
    )
    null_score_diff_threshold: float = Field(0.0, description="SQuAD v2: predict no answer above this margin.")


class QuestionAnswering(SquadFiles, Task):
    """The registered `qa` task: chooses extractive or generative QA for the model at hand."""

    name = "qa"
    roles = ("question", "context")
    optional_roles = ("answers", "answer", "id")
    target_roles = ("answers", "answer")
    auto_class_name = "AutoModelForQuestionAnswering"
    mapping_name = "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"
    needs = "an encoder (extractive QA) or a decoder / encoder-decoder (generative QA)"
    role_kinds: ClassVar[dict[str, str]] = {"answers": "answers", "answer": "text", "id": "any"}
    options_class = QAOptions

    def specialize(self, config: PretrainedConfig, recipe: Recipe) -> Task:
        from llmkit.models import is_decoder_only, is_encoder_decoder

        writes_text = is_decoder_only(config) or is_encoder_decoder(config)
        mode = recipe.options.mode
        if mode == "auto":
            mode = "generative" if writes_text else "extractive"
        if mode == "extractive":
            if writes_text:
                raise LlmkitError(
                    f"recipe field `qa.mode`: extractive QA needs an encoder (BERT family); model type "
                    f"`{config.model_type}` generates text: use `qa.mode: generative` (or auto)"
                )
            return ExtractiveQA()
        if not writes_text:
            raise LlmkitError(
                f"recipe field `qa.mode`: generative QA needs a decoder (GPT-2) or encoder-decoder (T5); model "
                f"type `{config.model_type}` is encoder-only: use `qa.mode: extractive` (or auto)"
            )
        return GenerativeQA().specialize(config, recipe)


TASK = QuestionAnswering()
