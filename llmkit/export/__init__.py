"""`llmkit export RUN_DIR OUT_DIR --format onnx`: an ONNX model with proven parity, and predict on it.

The trained model (a LoRA run merged first) is exported with `torch.onnx` (the torch.export-based exporter,
dynamic batch and sequence axes). Parity is part of the command: PyTorch and ONNX Runtime run on real
inputs, the run's own eval data preprocessed as in training, and the export fails (exit 1, nothing written)
when an output differs by more than the tolerance. `export.json` holds the figures: max abs difference,
argmax agreement (and agreement with the gold labels where the task has them), latency of both runtimes
on CPU at batch 1 and 32, sizes, and for `--quantize int8` (onnxruntime's dynamic quantization) the
quantized model's own agreement.

What is exported is the model head, not the task: the task says which head it has (`export_head`, see
`heads`), so a task with another head (token classification, multiple choice) needs no change here. Causal
LMs are exported without a KV cache: the graph gives the logits of a full sequence, and `predict` on an
export generates greedily by running the whole sequence again for each new token.

OUT_DIR holds `model.onnx` (and `model.int8.onnx`), the tokenizer, `config.json` (label names, special
ids), the run's `recipe.yaml` (task, columns, lengths, generation settings) and `export.json`;
`llmkit predict OUT_DIR` then runs the graph with onnxruntime (no PyTorch model is built) through the task's
own predict code, so the records are the same as for the run folder.

The parts: `command` (the command's steps), `heads` (what a head exports), `inputs` (the eval batches),
`graph` (torch.onnx, onnxruntime sessions, quantization), `measure` (parity, latency, sizes), `folder`
(the files written), `runtime` (an export as the model `predict` uses).
"""

from llmkit.export.command import DEFAULT_SAMPLES, DEFAULT_TOLERANCE, FORMATS, QUANTIZATIONS, export, parity_failure
from llmkit.export.folder import INT8_FILE, ONNX_FILE, REPORT_FILE, is_export_folder
from llmkit.export.heads import ExportFailed, Head, ParityFailed, head_of
from llmkit.export.runtime import OnnxModel, load_onnx_model

__all__ = [
    "DEFAULT_SAMPLES",
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "INT8_FILE",
    "ONNX_FILE",
    "QUANTIZATIONS",
    "REPORT_FILE",
    "ExportFailed",
    "Head",
    "OnnxModel",
    "ParityFailed",
    "export",
    "head_of",
    "is_export_folder",
    "load_onnx_model",
    "parity_failure",
]
