"""LoRA with peft: wrap a loaded model, load a trained adapter folder, merge it into a plain model.

Nothing here knows the task. Which layers get LoRA and which modules train in full are read from the
model itself: peft's per-architecture table (GPT-2 `c_attn`, BERT `query`/`value`, ...) or the attention
projections found in the module tree, and the task head is whatever sits beside the base model
(`classifier`, `score`, `qa_outputs`, ...) unless it is tied to the input embeddings (an LM head).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError
from llmkit.run_folder import is_adapter_folder as is_adapter_folder  # re-exported: run_folder names the files

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from llmkit.recipe import PeftSection

#: transformers' Auto mapping that a model class belongs to → peft's task type (decides the PeftModel class).
TASK_TYPES = {
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "CAUSAL_LM",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES": "SEQ_2_SEQ_LM",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": "SEQ_CLS",
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES": "QUESTION_ANS",
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": "TOKEN_CLS",
}
ATTENTION_WORDS = ("attn", "attention")


def linear_layer_types() -> tuple[type, ...]:
    import torch
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)


def auto_target_modules(model: PreTrainedModel) -> list[str] | str:
    """peft's table for known architectures; else the attention projections of the model; else all linear layers."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model.config.model_type)
    if known:
        return list(known)
    base = model.get_submodule(model.base_model_prefix) if hasattr(model, model.base_model_prefix) else model
    names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in base.named_modules()
            if isinstance(module, linear_layer_types()) and any(word in name.lower() for word in ATTENTION_WORDS)
        }
    )
    return names or "all-linear"


def head_modules(model: PreTrainedModel) -> list[str]:
    """The task head: top-level modules with weights beside the base model, except an LM head tied to the embeddings.

    A head the checkpoint lacks is new (randomly initialised), so it must train in full.
    """
    if model.base_model_prefix not in dict(model.named_children()):
        return []  # no base module beside a head (T5 keeps encoder, decoder and LM head side by side)
    embeddings = model.get_input_embeddings()
    tied = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
    heads = []
    for name, module in model.named_children():
        if name == model.base_model_prefix:
            continue
        parameters = list(module.parameters())
        if parameters and not any(id(p) in tied for p in parameters):
            heads.append(name)
    return heads


def task_type(model: PreTrainedModel) -> str | None:
    """peft's task type for this model class, looked up in transformers' Auto mappings."""
    from transformers.models.auto import modeling_auto

    for mapping_name, peft_type in TASK_TYPES.items():
        mapping = getattr(modeling_auto, mapping_name, {})
        classes = mapping.get(model.config.model_type, ())
        if type(model).__name__ in ((classes,) if isinstance(classes, str) else tuple(classes)):
            return peft_type
    return None


def base_reference(model: PreTrainedModel) -> str | None:
    """Where the base weights come from, as an adapter must record it: a local folder made absolute."""
    name = model.config._name_or_path or None
    if name and Path(name).exists():
        return str(Path(name).resolve())
    return name


def wrap(model: PreTrainedModel, section: PeftSection) -> Any:
    """Add LoRA layers; only they and the task head train."""
    from peft import LoraConfig, get_peft_model

    base = base_reference(model)
    if base is None:
        raise LlmkitError(
            "recipe section `peft`: LoRA adapts a pretrained model, but `model.from_config` builds an untrained one "
            "whose weights the adapter would not hold; set `model.name_or_path` to a checkpoint"
        )
    targets = auto_target_modules(model) if section.target_modules == "auto" else list(section.target_modules)
    to_save = list(dict.fromkeys([*head_modules(model), *(section.modules_to_save or [])]))
    config = LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=targets,
        modules_to_save=to_save or None,
        task_type=task_type(model),
        # Conv1D layers (GPT-2) store weights as (in, out); peft must know to transpose them.
        fan_in_fan_out=uses_conv1d(model, targets),
    )
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as err:
        message = str(err).strip().splitlines()[0]
        raise LlmkitError(f"recipe field `peft.target_modules`: {message}") from None
    wrapped.peft_config["default"].base_model_name_or_path = base
    return wrapped


def uses_conv1d(model: PreTrainedModel, targets: list[str] | str) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(
        isinstance(module, Conv1D) and (targets == "all-linear" or name.rsplit(".", 1)[-1] in targets)
        for name, module in model.named_modules()
    )


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters, counting tied weights once."""
    seen: set[int] = set()
    trainable = total = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def describe_trainable(model: Any) -> str:
    trainable, total = parameter_counts(model)
    return f"trainable parameters: {trainable:,} of {total:,} ({trainable / max(total, 1):.2%})"


def attach(model: PreTrainedModel, path: Path) -> Any:
    """Put a trained adapter (LoRA weights and the task head it saved) onto its base model, for inference."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path))


def merge(model: Any) -> PreTrainedModel:
    """Fold the LoRA deltas into the base weights: a plain transformers model with identical outputs."""
    merged = model.merge_and_unload()
    merged.config._name_or_path = ""
    return merged
