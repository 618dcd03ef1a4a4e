"""Translation: `source` → `target`, scored with sacreBLEU (BLEU and chrF) as HF `run_translation` scores it.

Rows are `{"source": ..., "target": ...}` or the Hugging Face layout `{"translation": {"en": ..., "ro": ...}}`
with `translation.source_lang` / `target_lang` naming the two texts. Local files in that layout are read as
source/target rows (so a tokenizer trained on the data sees both texts); a hub dataset's `translation`
column is turned into them when the data is prepared. T5/BART/Marian learn it as sequence-to-sequence (T5
with its task prefix, "translate English to Romanian: "); GPT-2 style decoders learn
`source + "\\nTranslation:" + target + EOS` with the prompt masked, the mechanism shared with summarization.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from llmkit.errors import LlmkitError
from llmkit.tasks.mechanisms.prompting import PromptOptions, PromptToTarget

if TYPE_CHECKING:
    from collections.abc import Sequence

    from datasets import Dataset, DatasetDict
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from llmkit.recipe import Recipe
    from llmkit.tasks.base import Evaluation, Prepared, Task

#: language names for T5's prefix pattern; a code not listed is used as written ("Pseudo" stays "Pseudo")
LANGUAGE_NAMES = {
    "ar": "Arabic", "cs": "Czech", "de": "German", "en": "English", "es": "Spanish", "et": "Estonian",
    "fi": "Finnish", "fr": "French", "gu": "Gujarati", "hi": "Hindi", "it": "Italian", "ja": "Japanese",
    "kk": "Kazakh", "lt": "Lithuanian", "lv": "Latvian", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese",
    "ro": "Romanian", "ru": "Russian", "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
}  # fmt: skip


def language_code(language: str) -> str:
    """`en_XX` (mBART style) → `en`, as `run_translation` looks languages up in the `translation` dicts."""
    return language.split("_")[0]


def language_name(language: str) -> str:
    return LANGUAGE_NAMES.get(language_code(language).lower(), language)


class TranslationOptions(PromptOptions):
    """Options of task `translation` (its recipe section `translation:`)."""

    source_lang: str | None = Field(
        None, description="Language of the source (en, en_XX): the key of each row's `translation` dict."
    )
    target_lang: str | None = Field(None, description="Language of the target (ro, ro_RO).")
    source_prefix: str | None = Field(
        None, description='Text put before every source (unset: T5\'s "translate English to Romanian: ", else none).'
    )


def sacrebleu_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (0–100) from sacrebleu, texts stripped, one reference per sentence: what
    `evaluate.load("sacrebleu")` returns for `run_translation`'s `[[reference]]` lists (unrounded)."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    hypotheses = [text.strip() for text in predictions]
    streams = [[text.strip() for text in references]]  # the references transposed: one stream per reference
    return {
        "bleu": float(sacrebleu.corpus_bleu(hypotheses, streams).score),
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, streams).score),
    }


def task_prefix(config: PretrainedConfig, options: TranslationOptions) -> str:
    """The text before every source: the recipe's `source_prefix`; else the checkpoint's own prefix for this
    pair (T5's `task_specific_params["translation_en_to_ro"]`); else T5's pattern; other models: none."""
    if options.source_prefix is not None:
        return options.source_prefix
    source, target = options.source_lang, options.target_lang
    if source is None or target is None:
        return ""
    params = getattr(config, "task_specific_params", None) or {}
    own = params.get(f"translation_{language_code(source)}_to_{language_code(target)}") or {}
    if "prefix" in own:
        return str(own["prefix"])
    if config.model_type == "t5":
        return f"translate {language_name(source)} to {language_name(target)}: "
    return ""


def json_rows(path: Path) -> list[Any] | None:
    """The records of a JSON-lines or JSON file whose first record holds a `translation` dict; None otherwise
    (the file is read as any other, and a file that is not UTF-8 is reported by that reader)."""
    if path.suffix.lower() not in (".json", ".jsonl"):
        return None
    try:
        with path.open(encoding="utf-8") as handle:
            head = loads_or_none(next((line for line in handle if line.strip()), ""))
        if isinstance(head, dict) and not isinstance(head.get("data"), list):
            return json_lines(path) if isinstance(head.get("translation"), dict) else None
        content = head if head is not None else loads_or_none(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return None
    records = content.get("data") if isinstance(content, dict) else content
    if isinstance(records, list) and records and isinstance(records[0], dict):
        return records if isinstance(records[0].get("translation"), dict) else None
    return None


def loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def json_lines(path: Path) -> list[Any]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = loads_or_none(line)
            if row is None:
                raise LlmkitError(f"data file {path}: line {number} is not JSON")
            rows.append(row)
    return rows


class Translation(PromptToTarget):
    name = "translation"
    roles = ()  # `source` and `target` columns, or one `translation` column of {language: text} dicts
    optional_roles = ("source", "target", "translation")
    role_kinds: ClassVar[dict[str, str]] = {"translation": "any"}
    target_roles = ("target",)
    needs = "a decoder-only (GPT-2) or encoder-decoder (T5, BART, Marian) model"
    default_separator = "\nTranslation:"
    text_role = "source"
    target_role = "target"
    options_class = TranslationOptions

    def __init__(
        self,
        encoder_decoder: bool = False,
        task_prefix: str = "",
        languages: tuple[str | None, str | None] = (None, None),
        files: dict[str, str | None] | None = None,
    ) -> None:
        super().__init__(encoder_decoder, task_prefix)
        self.languages = languages
        self.files = files or {}  # split → the recipe's data path, to name the split of a file being read

    def specialize(self, config: PretrainedConfig, recipe: Recipe) -> Task:
        variant = super().specialize(config, recipe)
        options = recipe.options
        files = {"train": recipe.data.train, "eval": recipe.data.eval}
        return Translation(
            variant.encoder_decoder,  # type: ignore[attr-defined]
            task_prefix(config, options),
            (options.source_lang, options.target_lang),
            files,
        )

    # ------------------------------------------------------------------ the `translation` layout

    def pair(self, translation: Any, where: str, need_target: bool = True) -> tuple[str, str | None]:
        """(source, target) of one `translation` dict; `where` is "train row 3" for the error. A `predict`
        input may lack the target (it is only the reference)."""
        if not isinstance(translation, dict):
            raise LlmkitError(
                f"data column `translation` must hold {{language: text}} dicts, but {where} holds "
                f"{type(translation).__name__}"
            )
        source_lang, target_lang = self.languages
        source = self.text_in(translation, "source_lang", source_lang, where)
        if not need_target and self.lookup(translation, target_lang) is None:
            return source, None
        return source, self.text_in(translation, "target_lang", target_lang, where)

    @staticmethod
    def lookup(translation: dict[str, Any], language: str | None) -> str | None:
        """The text of `language` (`ro_RO` also finds `ro`, as in `run_translation`); None when absent."""
        if language is None:
            return None
        value = translation.get(language)
        return value if value is not None else translation.get(language_code(language))

    def text_in(self, translation: dict[str, Any], field: str, language: str | None, where: str) -> str:
        present = ", ".join(sorted(key for key, value in translation.items() if value is not None)) or "none"
        if language is None:
            raise LlmkitError(
                f"recipe field `translation.{field}` is not set: the data's `translation` dicts hold {present}; "
                f"say which one is the {field.split('_')[0]}"
            )
        text = self.lookup(translation, language)
        if text is None:
            raise LlmkitError(
                f"recipe field `translation.{field}`: language `{language}` is not in the `translation` of {where} "
                f"(languages there: {present})"
            )
        return str(text)

    def split_of(self, path: Path) -> str:
        for split, source in self.files.items():
            if source is not None and Path(source).resolve() in (path.resolve(), path.resolve().parent):
                return split
        return "train"

    def read_file(self, path: Path) -> list[dict[str, Any]] | None:
        records = json_rows(path)
        if records is None:
            return None
        split = self.split_of(path)
        rows = []
        for index, record in enumerate(records):
            value = record.get("translation") if isinstance(record, dict) else record
            source, target = self.pair(value, f"{split} row {index} ({path.name})")
            rows.append({"source": source, "target": target})
        return rows

    def flattened(self, dataset: Dataset, split: str) -> Dataset:
        """A hub dataset's `translation` column as `source` and `target` columns."""
        from llmkit.data import quiet_progress

        if "translation" not in dataset.column_names:
            return dataset
        if "source" in dataset.column_names:
            return dataset.remove_columns("translation")

        def split_pairs(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            pairs = [
                self.pair(value, f"{split} row {i}") for value, i in zip(batch["translation"], indices, strict=True)
            ]
            return {"source": [s for s, _ in pairs], "target": [t for _, t in pairs]}

        with quiet_progress(len(dataset) < 20_000):
            return dataset.map(
                split_pairs,
                batched=True,
                with_indices=True,
                remove_columns=["translation"],
                desc=f"Reading {split} pairs",
            )

    # ------------------------------------------------------------------ data

    def preprocess(self, recipe: Recipe, raw: DatasetDict, tokenizer: PreTrainedTokenizerBase) -> Prepared:
        from datasets import DatasetDict

        raw = DatasetDict({split: self.flattened(dataset, split) for split, dataset in raw.items()})
        return super().preprocess(recipe, raw, tokenizer)

    def validate(self, dataset: Dataset, split: str) -> None:
        """Both texts of every row must be there: an empty one would silently train on nothing."""
        for role in ("source", "target"):
            if role not in dataset.column_names:
                raise LlmkitError(
                    f"data column `{role}` not found in the {split} data: give `source` and `target` columns "
                    f"(or set `data.columns.{role}`), or a `translation` column of {{language: text}} dicts with "
                    "`translation.source_lang` and `translation.target_lang`"
                )
            for index, value in enumerate(dataset[role]):
                if value is None or not str(value).strip():
                    raise LlmkitError(f"data column `{role}` is empty in {split} row {index}")

    def prompt_parts(self, batch: dict[str, list]) -> tuple[list[str], list[str]]:
        sources = [str(s) for s in batch["source"]]
        return sources, [""] * len(sources)

    def target_texts(self, batch: dict[str, list], split: str) -> list[str]:
        return [str(t) for t in batch["target"]]

    def check_notes(self, recipe: Recipe, raw: DatasetDict) -> list[str]:
        notes = super().check_notes(recipe, raw)
        if self.task_prefix:
            notes.append(f"every source starts with the task prefix {self.task_prefix!r}")
        if any("translation" in dataset.column_names for dataset in raw.values()):
            source, target = self.languages
            notes.append(f"source and target are the `{source}` and `{target}` texts of each row's `translation`")
        return notes

    # ------------------------------------------------------------------ evaluation and inference

    def score(self, predictions: list[str], examples: Dataset, recipe: Recipe) -> dict[str, float]:
        return sacrebleu_scores(predictions, [str(t) for t in examples["target"]])

    def evaluate(
        self, trainer: Trainer, prepared: Prepared, recipe: Recipe, tokenizer: PreTrainedTokenizerBase
    ) -> Evaluation:
        """BLEU and chrF of the generated translations, plus `gen_len`: their mean length in tokens."""
        evaluation = super().evaluate(trainer, prepared, recipe, tokenizer)
        texts = [record["target"] for record in evaluation.predictions or []]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else [0]
        evaluation.metrics["eval_gen_len"] = sum(lengths) / len(lengths)
        return evaluation

    def records(self, predictions: list[str], examples: Dataset) -> list[dict[str, Any]]:
        references = examples["target"] if "target" in examples.column_names else [None] * len(predictions)
        return [
            {"source": source, "target": prediction, **({"reference": reference} if reference is not None else {})}
            for source, prediction, reference in zip(examples["source"], predictions, references, strict=True)
        ]

    def predict(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], recipe: Recipe
    ) -> list[dict[str, Any]]:
        from datasets import Dataset

        inputs = [self.input_row(row, index) for index, row in enumerate(rows)]
        examples = Dataset.from_list(inputs)
        return self.records(self.generate(model, tokenizer, examples.to_dict(), recipe), examples)

    def input_row(self, row: dict[str, Any], index: int = 0) -> dict[str, Any]:  # type: ignore[override]
        """A `predict` input: `source` (`--text` fills it) or a `translation` dict; a given target is the
        reference."""
        if "translation" in row and "source" not in row:
            source, target = self.pair(row["translation"], f"predict input row {index}", need_target=False)
            return {"source": source, "target": target}
        source = row.get("source", row.get("text"))
        if source is None or not str(source).strip():
            raise LlmkitError(
                f"predict input row {index} needs a non-empty `source` (or `text`, or a `translation` dict)"
            )
        target = row.get("target")  # every row has the key: `Dataset.from_list` takes the first row's columns
        return {"source": str(source), "target": None if target is None else str(target)}


TASK = Translation()
