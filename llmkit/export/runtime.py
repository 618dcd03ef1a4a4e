"""An export as the model `llmkit predict` hands to the task: an ONNX Runtime session behind the few parts
of a transformers model that the tasks' predict code uses, so no PyTorch model is built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError
from llmkit.export.folder import ONNX_FILE, REPORT_FILE
from llmkit.export.graph import open_session
from llmkit.export.heads import head_of
from llmkit.export.inputs import positions

if TYPE_CHECKING:
    from llmkit.export.heads import Head
    from llmkit.pipeline import Setup


def load_onnx_model(folder: Path, run: Setup) -> OnnxModel:
    """The export in `folder` as the model `predict` hands to the task (onnxruntime underneath)."""
    from llmkit.extras import require_extra

    require_extra("export", f"`llmkit predict` on the ONNX export {folder}")
    report = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
    return OnnxModel(folder / report.get("model_file", ONNX_FILE), run.config, head_of(run.task, report["head"]))


class OnnxModel:
    """An ONNX Runtime session behind the few parts of a transformers model that the tasks' predict code
    uses: called with tensors, it returns an object with the head's outputs; `generate` is greedy."""

    def __init__(self, path: Path, config: Any, head: Head) -> None:
        import torch

        self.session = open_session(path)
        self.names = [node.name for node in self.session.get_inputs()]
        self.config = config
        self.head = head
        self.device = torch.device("cpu")
        self.training = False

    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        return self

    def parameters(self) -> Any:
        import torch

        yield torch.zeros(0)  # where generation code looks for the model's device

    def run(self, inputs: dict[str, Any]) -> list[Any]:
        feeds = {}
        for name in self.names:
            value = inputs.get(name)
            if value is None and name == "position_ids":
                value = positions(inputs["attention_mask"])
            if value is None:
                raise LlmkitError(f"the ONNX model needs `{name}`, which the tokenizer did not give")
            feeds[name] = value.cpu().numpy() if hasattr(value, "cpu") else value
        return self.session.run(list(self.head.outputs), feeds)

    def __call__(self, **inputs: Any) -> Any:
        from types import SimpleNamespace

        import torch

        outputs = self.run(inputs)
        return SimpleNamespace(
            **{name: torch.from_numpy(o) for name, o in zip(self.head.outputs, outputs, strict=True)}
        )

    def generate(
        self,
        input_ids: Any,
        attention_mask: Any,
        pad_token_id: int | None = None,
        max_new_tokens: int = 64,
        num_beams: int = 1,
        do_sample: bool = False,
        no_repeat_ngram_size: int = 0,
        repetition_penalty: float | None = None,
        **ignored: Any,
    ) -> Any:
        """Greedy decoding, the whole sequence each step (the graph has no KV cache), stopping at EOS."""
        import torch

        if not self.head.generates:
            raise LlmkitError("this ONNX export does not generate text")
        unsupported = {
            "generation.num_beams": num_beams != 1,
            "generation.do_sample": bool(do_sample),
            "generation.no_repeat_ngram_size": bool(no_repeat_ngram_size),
            "generation.repetition_penalty": repetition_penalty not in (None, 1.0),
        }
        named = [name for name, used in unsupported.items() if used]
        if named:
            raise LlmkitError(
                f"predict on an ONNX export decodes greedily; recipe field `{named[0]}` asks for more "
                "(use the run folder for it)"
            )
        eos = getattr(self.config, "eos_token_id", None)
        pad = pad_token_id if pad_token_id is not None else (eos if eos is not None else 0)
        ids, mask = input_ids.clone(), attention_mask.clone()
        done = torch.zeros(len(ids), dtype=torch.bool)
        for _ in range(max_new_tokens):
            logits = torch.from_numpy(self.run({"input_ids": ids, "attention_mask": mask})[0])
            token = logits[:, -1, :].argmax(-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
            if eos is not None:
                done |= token == eos
            if bool(done.all()):
                break
        return ids
