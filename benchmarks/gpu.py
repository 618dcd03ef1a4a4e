"""GPU: GPT-2 124M pretraining (tokens/s, MFU) and BERT-base extractive-QA fine-tuning, through llmkit.

Runs only where CUDA is available; elsewhere it records "not measured (no GPU)". Both models are built from
config (nothing is downloaded) and trained by llmkit's own path (recipe → pipeline.setup → task.preprocess →
training_arguments → build_trainer → Trainer.train), with llmkit's GPU defaults: bf16 autocast, SDPA
attention, fused AdamW; `--compile` adds `training.torch_compile`. GPT-2 is also trained by a plain PyTorch
loop (same blocks, bf16 autocast, fused AdamW) for the overhead ratio.

MFU = 6 · N · tokens/s ÷ peak dense bf16 FLOP/s of the device (N = parameter count; set LLMKIT_PEAK_TFLOPS
for a device not in the table). `python -m benchmarks.gpu --dry-run` runs the same code on tiny models on
the CPU, to check it without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Result, data_dir, documents, skipped

#: peak dense bf16 tensor-core FLOP/s (vendor data sheets), matched against the device name in order
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
)


def peak_flops(name: str) -> float | None:
    if os.environ.get("LLMKIT_PEAK_TFLOPS"):
        return float(os.environ["LLMKIT_PEAK_TFLOPS"]) * 1e12
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def shakespeare_or_builtin(folder: Path) -> str:
    from benchmarks.common import shakespeare_file

    path = shakespeare_file()
    if path is not None:
        return str(path)
    _, texts = documents()
    target = folder / "corpus.txt"
    target.write_text("\n\n".join(texts), encoding="utf-8")
    return str(target)


def gpt2_tokenizer_dir(folder: Path) -> str:
    from benchmarks.common import gpt2_tokenizer

    root = data_dir()
    if root is not None and (root / "tokenizers" / "gpt2" / "vocab.json").is_file():
        return str(root / "tokenizers" / "gpt2")
    _, tokenizer = gpt2_tokenizer()
    tokenizer.save_pretrained(folder / "gpt2-tokenizer")
    return str(folder / "gpt2-tokenizer")


def gpt2(folder: Path, steps: int, compile_model: bool, dry_run: bool) -> list[Result]:
    """GPT-2 124M from config on tinyshakespeare, 1024-token blocks; llmkit vs a plain bf16 loop."""
    import torch

    from benchmarks import train_throughput as tt
    from llmkit import pipeline
    from llmkit.recipe import recipe_from_mapping

    big = torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory > 60e9
    model = {"model_type": "gpt2"} if not dry_run else {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2}
    block = 1024 if not dry_run else 64
    batch = (32 if big else 8) if not dry_run else 4
    warmup = max(steps // 10, 2)
    shape = tt.Shape(
        layers=0, hidden=0, heads=0, block=block, batch=batch, vocab=0, warmup=warmup, steps=steps, repeats=1
    )
    recipe = recipe_from_mapping(
        {
            "task": "clm",
            "model": {"from_config": model},
            "tokenizer": {"name_or_path": gpt2_tokenizer_dir(folder)},
            "data": {"train": shakespeare_or_builtin(folder), "max_length": block},
            "training": {
                "output_dir": str(folder / "gpt2"),
                "max_steps": warmup + steps,
                "per_device_train_batch_size": batch,
                "learning_rate": 6e-4,
                "seed": 0,
                "save_strategy": "no",
                "report_to": "none",
            },
        }
    )
    run = pipeline.setup(recipe)
    prepared = run.task.preprocess(recipe, run.raw, run.tokenizer)
    usable = len(prepared.train) - len(prepared.train) % batch  # whole batches only, on both sides
    prepared.train = prepared.train.select(range(usable))
    parameters = sum(p.numel() for p in pipeline.load_model(run).parameters())
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)"
    peak = peak_flops(device)
    on_gpu = torch.cuda.is_available()
    variants = {"eager": {}}
    if compile_model:
        variants["torch_compile"] = {"torch_compile": True}
    results = []
    timings = {}
    for name, overrides in variants.items():
        timings[name] = tt.llmkit_side(run, prepared, shape, **overrides)
    plain, plain_losses = tt.plain_side(run, prepared, shape, bf16=on_gpu)
    gap = tt.loss_gap(timings["eager"].logged, plain_losses)
    for name, timing in timings.items():
        rate = timing.tokens_per_second
        mfu = 6 * parameters * rate / peak if peak else None
        results.append(
            Result(
                f"GPU GPT-2 124M pretraining tokens/s ({name}, vs plain bf16 loop)",
                rate,
                plain.tokens_per_second,
                unit="tok/s",
                goal=">= 0.95",
                key=f"gpu_gpt2_{name}_ratio",
                note=f"{device}; {parameters / 1e6:.0f}M params, {batch}×{block} tokens/step, {steps} steps timed; "
                + (f"MFU {mfu:.1%}" if mfu is not None else "MFU unknown (set LLMKIT_PEAK_TFLOPS)")
                + f"; loss gap vs plain {gap:.1e}",
                details={
                    "mfu": mfu,
                    "parameters": parameters,
                    "peak_flops": peak,
                    "plain_tokens_per_second": plain.tokens_per_second,
                },
            )
        )
        results.append(
            Result(
                f"GPU GPT-2 124M MFU ({name})",
                mfu,
                unit="frac",
                goal=">= 0.45",
                key=f"gpu_gpt2_{name}_mfu",
                score=mfu,
                note=f"6·N·tokens/s ÷ {peak / 1e12:.0f} TFLOP/s bf16 peak" if peak else "peak unknown",
            )
        )
    return results


def bert_qa(folder: Path, steps: int, dry_run: bool) -> list[Result]:
    """BERT-base (from config) extractive-QA fine-tuning on the SQuAD-format files, 384-token windows."""
    import torch
    from transformers import TrainerCallback

    from benchmarks.common import clock
    from llmkit import pipeline
    from llmkit.recipe import recipe_from_mapping
    from llmkit.trainer import build_trainer, training_arguments

    root = data_dir()
    squad = root / "squad-subsets" / "xquad.en.json" if root else None
    vocab = root / "tokenizers" / "bert-base-uncased" if root else None
    if squad is None or not squad.is_file() or vocab is None or not vocab.is_dir():
        return [skipped("GPU BERT-base QA fine-tuning", "no shared SQuAD data")]
    model = {"model_type": "bert"}
    if dry_run:
        model.update(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128)
    batch, length = (32, 384) if not dry_run else (4, 128)
    warmup = max(steps // 10, 2)
    recipe = recipe_from_mapping(
        {
            "task": "qa",
            "model": {"from_config": model},
            "tokenizer": {"name_or_path": str(vocab)},
            "data": {"train": str(squad), "max_length": length},
            "qa": {"doc_stride": length // 3},
            "training": {
                "output_dir": str(folder / "bert"),
                "max_steps": warmup + steps,
                "per_device_train_batch_size": batch,
                "learning_rate": 5e-5,
                "seed": 0,
                "save_strategy": "no",
                "report_to": "none",
                "include_num_input_tokens_seen": "all",
            },
        }
    )
    run = pipeline.setup(recipe)
    prepared = run.task.preprocess(recipe, run.raw, run.tokenizer)
    model_object = pipeline.load_model(run)
    parameters = sum(p.numel() for p in model_object.parameters())
    marks: dict[int, tuple[float, int]] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in (warmup, warmup + steps):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                marks[state.global_step] = (clock(), state.num_input_tokens_seen)

    args = training_arguments(recipe)
    trainer = build_trainer(run.task, recipe, args, model_object, run.tokenizer, prepared, callbacks=[Clock()])
    trainer.train()
    (t0, n0), (t1, n1) = marks[warmup], marks[warmup + steps]
    seconds = t1 - t0
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)"
    peak = peak_flops(device)
    tokens_per_second = (n1 - n0) / seconds
    mfu = 6 * parameters * tokens_per_second / peak if peak else None
    return [
        Result(
            "GPU BERT-base QA fine-tuning windows/s",
            steps * batch / seconds,
            unit="ex/s",
            key="gpu_bert_qa_examples_per_second",
            note=f"{device}; {parameters / 1e6:.0f}M params, batch {batch} × ≤{length} tokens, {steps} steps; "
            + (f"MFU {mfu:.1%}" if mfu is not None else "MFU unknown"),
            details={"tokens_per_second": tokens_per_second, "mfu": mfu, "parameters": parameters},
        )
    ]


def run(quick: bool, compile_model: bool | None = None, dry_run: bool = False) -> list[Result]:
    import torch

    if not torch.cuda.is_available() and not dry_run:
        return [
            skipped("GPU GPT-2 124M pretraining tokens/s and MFU", "not measured (no GPU)", "gpu_gpt2_eager_mfu"),
            skipped("GPU BERT-base QA fine-tuning", "not measured (no GPU)", "gpu_bert_qa_examples_per_second"),
        ]
    steps = 6 if dry_run else (200 if quick else 400)
    compile_model = (not quick and not dry_run) if compile_model is None else compile_model
    with tempfile.TemporaryDirectory() as folder:
        return gpt2(Path(folder), steps, compile_model, dry_run) + bert_qa(Path(folder), steps // 2, dry_run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--compile", action="store_true", default=None, help="also measure training.torch_compile")
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: check the code, not the GPU")
    options = parser.parse_args()
    for result in run(options.quick, options.compile, options.dry_run):
        print(json.dumps(result.as_dict(), default=str))


if __name__ == "__main__":
    main()
