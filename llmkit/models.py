"""Models and tokenizers: load a checkpoint, build one from a config, or train a tokenizer on the data."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from llmkit.recipe import ModelSection, TokenizerSection, TokenizerTrainSection

BPE_SPECIAL = "<|endoftext|>"
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _hub_error(what: str, name: str, err: Exception) -> LlmkitError:
    """Turn a from_pretrained failure into one line the user can act on."""
    where = "local folder" if Path(name).exists() else "hub id (offline or not found?)"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return LlmkitError(f"cannot load {what} `{name}` as a {where}: {first[:300]}")


def load_config(section: ModelSection, overrides: dict[str, Any] | None = None) -> PretrainedConfig:
    """The model's config without its weights: cheap, so architecture checks run before loading."""
    from transformers import AutoConfig

    if section.from_config is not None:
        options = dict(section.from_config)
        try:
            return AutoConfig.for_model(options.pop("model_type"), **options, **(overrides or {}))
        except (ValueError, KeyError, TypeError) as err:
            raise LlmkitError(f"recipe field `model.from_config`: {err}") from None
    name = str(section.name_or_path)
    if Path(name).exists() and not (Path(name) / "config.json").is_file() and not _is_adapter(Path(name)):
        raise LlmkitError(f"recipe field `model.name_or_path`: {name} is not a model folder (no config.json)")
    base = adapter_base(Path(name)) if _is_adapter(Path(name)) else name
    try:
        return AutoConfig.from_pretrained(
            base, revision=section.revision, trust_remote_code=section.trust_remote_code, **(overrides or {})
        )
    except (OSError, ValueError) as err:
        raise _hub_error("model", name, err) from None


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def adapter_base(path: Path) -> str:
    """The base checkpoint a PEFT adapter folder was trained from."""
    import json

    return json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]


def load_tokenizer(section: TokenizerSection, model: ModelSection) -> PreTrainedTokenizerBase:
    """The tokenizer named by the recipe (or the model's own). Training is `train_tokenizer`."""
    from transformers import AutoTokenizer

    name = section.name_or_path or model.name_or_path
    if name is None:
        raise LlmkitError("`model.from_config` needs a tokenizer: set `tokenizer.name_or_path` or `tokenizer.train`")
    if _is_adapter(Path(name)) and not (Path(name) / "tokenizer_config.json").is_file():
        name = adapter_base(Path(name))
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError, TypeError) as err:
        raise _hub_error("tokenizer", name, err) from None
    return ensure_pad_token(tokenizer)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """GPT-2 style tokenizers have no pad token; batching needs one, so reuse EOS (labels mask it by attention)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_tokenizer(spec: TokenizerTrainSection, texts: Iterable[str]) -> PreTrainedTokenizerBase:
    """Train a GPT-2 style byte-level BPE or a BERT style WordPiece tokenizer on the given texts."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if spec.kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=spec.vocab_size,
            min_frequency=spec.min_frequency,
            special_tokens=[BPE_SPECIAL],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(_batches(texts), trainer)
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=BPE_SPECIAL, eos_token=BPE_SPECIAL, unk_token=BPE_SPECIAL
        )
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=spec.vocab_size, min_frequency=spec.min_frequency, special_tokens=WORDPIECE_SPECIALS
        )
        tok.train_from_iterator(_batches(texts), trainer)
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    return ensure_pad_token(wrapped)


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        if text:
            batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_model(
    auto_class: Any,
    section: ModelSection,
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
) -> PreTrainedModel:
    """Instantiate (from config) or load (from a checkpoint, safetensors only) and fit it to the tokenizer."""
    import torch

    if section.from_config is not None:
        # A model built from config takes its special ids from the tokenizer (GPT-2's default 50256 would be wrong).
        config.vocab_size = len(tokenizer)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            token_id = getattr(tokenizer, name, None)
            if token_id is not None:
                setattr(config, name, token_id)
        model = auto_class.from_config(config, trust_remote_code=section.trust_remote_code)
    else:
        options: dict[str, Any] = {
            "revision": section.revision,
            "trust_remote_code": section.trust_remote_code,
            "use_safetensors": True,
        }
        if section.dtype is not None:
            options["dtype"] = section.dtype if section.dtype == "auto" else getattr(torch, section.dtype)
        if section.attn_implementation is not None:
            options["attn_implementation"] = section.attn_implementation
        try:
            model = auto_class.from_pretrained(section.name_or_path, config=config, **options)
        except (OSError, ValueError) as err:
            raise _hub_error("model weights", str(section.name_or_path), err) from None
    embeddings = model.get_input_embeddings()
    if embeddings is not None and len(tokenizer) > embeddings.weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def max_positions(config: PretrainedConfig) -> int | None:
    """Longest sequence the architecture accepts (None when the config does not say)."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def is_encoder_decoder(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def is_decoder_only(config: PretrainedConfig) -> bool:
    """A causal LM architecture (GPT-2, Llama, ...), known from the auto mapping rather than a name list."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not is_encoder_decoder(config) and not (
        _has_mlm_head(config)
    )


def _has_mlm_head(config: PretrainedConfig) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def supports(config: PretrainedConfig, mapping_name: str) -> bool:
    """Whether an Auto class (by its mapping, e.g. MODEL_FOR_MASKED_LM_MAPPING_NAMES) covers this model type."""
    from transformers.models.auto import modeling_auto

    return config.model_type in getattr(modeling_auto, mapping_name)
