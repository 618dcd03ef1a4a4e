"""Models: load a checkpoint, or build one from a config, with errors that name the recipe field.

Tokenizers are in `tokenization` (re-exported here: `load_tokenizer`, `train_tokenizer`, `ensure_pad_token`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit import hub
from llmkit.errors import LlmkitError, did_you_mean
from llmkit.run_folder import adapter_base, is_adapter_folder
from llmkit.tokenization import ensure_pad_token as ensure_pad_token
from llmkit.tokenization import load_tokenizer as load_tokenizer
from llmkit.tokenization import train_tokenizer as train_tokenizer

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from llmkit.recipe import ModelSection


def hub_error(what: str, name: str, err: Exception) -> LlmkitError:
    """Turn a from_pretrained failure into one line the user can act on."""
    if not Path(name).exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        return LlmkitError(f"cannot load {what} `{name}`: no such folder")
    if hub.is_hub_id(name) and hub.offline():
        field = "tokenizer.name_or_path" if what == "tokenizer" else "model.name_or_path"
        return LlmkitError(f"cannot load {what}: {hub.advice(name, field)}")
    where = "local folder" if Path(name).exists() else "hub id (offline or not found?)"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return LlmkitError(f"cannot load {what} `{name}` as a {where}: {first[:300]}")


def load_config(section: ModelSection, overrides: dict[str, Any] | None = None) -> PretrainedConfig:
    """The model's config without its weights: cheap, so architecture checks run before loading."""
    from transformers import AutoConfig

    if section.from_config is not None:
        return config_from_spec(section.from_config, overrides)
    name = str(section.name_or_path)
    if Path(name).exists() and not (Path(name) / "config.json").is_file() and not is_adapter_folder(name):
        raise LlmkitError(f"recipe field `model.name_or_path`: {name} is not a model folder (no config.json)")
    weights = any(Path(name).glob("*.safetensors")) or (Path(name) / "model.onnx").is_file()  # or `llmkit export`
    if Path(name).is_dir() and not is_adapter_folder(name) and not weights:
        raise LlmkitError(f"recipe field `model.name_or_path`: {name} has no *.safetensors weights (the format loaded)")
    # An adapter folder keeps its tuned config (label maps, pad id) beside the adapter; else use the base's.
    has_own_config = (Path(name) / "config.json").is_file()
    hub.prepare(name)
    base = adapter_base(Path(name)) if is_adapter_folder(name) and not has_own_config else name
    try:
        return AutoConfig.from_pretrained(
            base, revision=section.revision, trust_remote_code=section.trust_remote_code, **(overrides or {})
        )
    except (OSError, ValueError) as err:
        raise hub_error("model", name, err) from None


def config_from_spec(spec: dict[str, Any], overrides: dict[str, Any] | None = None) -> PretrainedConfig:
    """The config of a model built from scratch. An unknown model type or setting is a typo (transformers
    would keep an unknown key silently), so both are errors with a suggestion."""
    import inspect

    from transformers import CONFIG_MAPPING, PretrainedConfig

    options = dict(spec)
    model_type = str(options.pop("model_type"))
    if model_type not in CONFIG_MAPPING:
        hint = did_you_mean(model_type, CONFIG_MAPPING.keys())
        raise LlmkitError(f"recipe field `model.from_config.model_type`: unknown model type `{model_type}`{hint}")
    config_class = CONFIG_MAPPING[model_type]
    known = (
        set(config_class().to_dict())
        | set(getattr(config_class, "attribute_map", {}))
        | set(inspect.signature(config_class.__init__).parameters)
        | set(inspect.signature(PretrainedConfig.__init__).parameters)
        | {"num_labels"}
    )
    for key in options:
        if key not in known:
            hint = did_you_mean(key, known)
            raise LlmkitError(f"recipe field `model.from_config.{key}`: not a {config_class.__name__} setting{hint}")
    try:
        return config_class(**options, **(overrides or {}))
    except Exception as err:  # strict config dataclasses raise their own validation error types
        raise LlmkitError(f"recipe field `model.from_config`: {_one_line(err)}") from None


def check_buildable(auto_class: Any, config: PretrainedConfig) -> None:
    """Build the architecture on the meta device (no memory, no weights, milliseconds), so a config whose
    values do not fit together (e.g. n_embd not divisible by n_head) fails before the data is processed."""
    import torch

    try:
        with torch.device("meta"):
            auto_class.from_config(config)
    except Exception as err:
        problem = in_config_terms(_one_line(err), config)
        raise LlmkitError(f"recipe field `model.from_config`: cannot build `{config.model_type}`: {problem}") from None


#: names model code uses for config values (GPT-2's attention says `embed_dim` for the config's `n_embd`)
INTERNAL_NAMES = {"embed_dim": "hidden_size", "num_heads": "num_attention_heads", "num_layers": "num_hidden_layers"}


def in_config_terms(message: str, config: PretrainedConfig) -> str:
    """A model's error message in the recipe's words: internal names become the config keys a user writes."""
    import re

    spelled = {canonical: alias for canonical, alias in getattr(type(config), "attribute_map", {}).items()}

    def rename(match: re.Match[str]) -> str:
        canonical = INTERNAL_NAMES[match.group(0)]
        return spelled.get(canonical, canonical)

    return re.sub(r"\b(" + "|".join(INTERNAL_NAMES) + r")\b", rename, message)


def _one_line(err: BaseException) -> str:
    """An exception's message folded onto one line (config validation errors span several)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text[:300] if text else type(err).__name__


def build_model(
    auto_class: Any,
    section: ModelSection,
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
) -> PreTrainedModel:
    """Instantiate (from config) or load (from a checkpoint, safetensors only) and fit it to the tokenizer."""
    if section.from_config is not None:
        model = _from_config(auto_class, section, config, tokenizer)
    else:
        model = _from_checkpoint(auto_class, section, config)
    embeddings = model.get_input_embeddings()
    if embeddings is not None and len(tokenizer) > embeddings.weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    name_causal_loss(model)
    return model


def _from_config(
    auto_class: Any, section: ModelSection, config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    """A new model; it takes its special ids from the tokenizer (GPT-2's default 50256 would be wrong)."""
    config.vocab_size = len(tokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token_id = getattr(tokenizer, name, None)
        if token_id is not None:
            setattr(config, name, token_id)
    if getattr(config, "is_encoder_decoder", False) and getattr(config, "decoder_start_token_id", None) is None:
        config.decoder_start_token_id = tokenizer.pad_token_id  # T5's convention: decoding starts from pad
    return auto_class.from_config(config, trust_remote_code=section.trust_remote_code)


def _from_checkpoint(auto_class: Any, section: ModelSection, config: PretrainedConfig) -> PreTrainedModel:
    """The checkpoint's weights (safetensors only), with one line about weights missing or left unused."""
    import torch

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
        model, loading = auto_class.from_pretrained(
            section.name_or_path, config=config, output_loading_info=True, **options
        )
    except (OSError, ValueError) as err:
        raise hub_error("model weights", str(section.name_or_path), err) from None
    except RuntimeError as err:  # a config.json that does not describe the weights beside it
        if "size mismatch" not in str(err) and "mismatched" not in str(err):
            raise
        raise LlmkitError(
            f"recipe field `model.name_or_path`: {section.name_or_path}: the weights do not fit its config.json "
            "(tensor shapes differ)"
        ) from None
    report_loading(loading)
    return model


def report_loading(loading: dict[str, Any]) -> None:
    """One line, only when weights were really missing or left unused (transformers' table is silenced)."""
    from llmkit.console import say

    missing = sorted(loading.get("missing_keys") or [])
    unused = sorted(loading.get("unexpected_keys") or [])
    mismatched = sorted(
        str(item[0]) if isinstance(item, tuple) else str(item) for item in loading.get("mismatched_keys") or []
    )
    if missing:
        say(f"new weights (not in the checkpoint): {_listed(missing)} — expected for a new task head")
    if unused:
        say(f"checkpoint weights not used: {_listed(unused)} — expected when the checkpoint had another head")
    if mismatched:
        say(f"checkpoint weights of another shape, drawn anew: {_listed(mismatched)}")


def _listed(names: list[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def name_causal_loss(model: PreTrainedModel) -> None:
    """Say out loud that a decoder's loss shifts its labels (GPT-2 leaves `loss_type` unset).

    The Trainer normalises the loss by the number of predicted tokens, and it counts `labels[..., 1:]`
    only when `model.loss_type` names the causal-LM loss; otherwise it divides by L instead of L-1 per
    row and reports loss and perplexity too low (by 1.6% at 64 tokens).
    """
    from transformers.loss.loss_utils import LOSS_MAPPING

    if getattr(model, "loss_type", None) is None and "ForCausalLM" in LOSS_MAPPING:
        class_name = type(model).__name__
        if class_name.endswith(("LMHeadModel", "ForCausalLM")) and not model.config.is_encoder_decoder:
            model.loss_type = "ForCausalLM"


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

    return (
        config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and not is_encoder_decoder(config)
        and not (_has_mlm_head(config))
    )


def _has_mlm_head(config: PretrainedConfig) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def supports(config: PretrainedConfig, mapping_name: str) -> bool:
    """Whether an Auto class (by its mapping, e.g. MODEL_FOR_MASKED_LM_MAPPING_NAMES) covers this model type."""
    from transformers.models.auto import modeling_auto

    return config.model_type in getattr(modeling_auto, mapping_name)
