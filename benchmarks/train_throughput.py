"""Training-loop overhead: llmkit's Trainer (built by llmkit.trainer) vs a plain PyTorch loop.

Both sides train the same GPT-2 (built from config, same initial weights, dropout off) on the same packed
blocks in the same order (the Trainer's seedable sampler draws `randperm(n, seed)`; the plain loop does the
same), with the same fused AdamW, linear schedule and gradient clipping. Because the computation is the same,
the per-step losses must agree; the benchmark checks that before it reports a ratio.

Throughput is measured over a steady window (after warm-up steps) and includes everything the loop does in
it: data loading and collation, logging, callbacks. One-time costs (Trainer set-up, final checkpoint) are
reported separately.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

from benchmarks.common import Result, clock, cpu_clock, documents, interleaved, median


@dataclass
class Shape:
    layers: int
    hidden: int
    heads: int
    block: int
    batch: int
    vocab: int
    warmup: int
    steps: int
    repeats: int


QUICK = Shape(layers=2, hidden=128, heads=4, block=128, batch=16, vocab=4000, warmup=3, steps=20, repeats=3)
FULL = Shape(layers=4, hidden=256, heads=4, block=256, batch=8, vocab=8000, warmup=5, steps=60, repeats=5)


def recipe_for(shape: Shape, train_file: str, output_dir: str) -> Any:
    from llmkit.recipe import recipe_from_mapping

    no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    return recipe_from_mapping(
        {
            "task": "clm",
            "model": {
                "from_config": {
                    "model_type": "gpt2",
                    "n_layer": shape.layers,
                    "n_head": shape.heads,
                    "n_embd": shape.hidden,
                    "n_positions": shape.block,
                    **no_dropout,
                }
            },
            "tokenizer": {"train": {"kind": "bpe", "vocab_size": shape.vocab}},
            "data": {"train": train_file, "max_length": shape.block},
            "training": {
                "output_dir": output_dir,
                "max_steps": shape.warmup + shape.steps,
                "per_device_train_batch_size": shape.batch,
                "learning_rate": 1e-3,
                "seed": 0,
            },
        }
    )


@dataclass
class Timing:
    tokens_per_second: float
    tokens_per_cpu_second: float
    total_seconds: float
    losses: list[float]
    logged: dict[int, float] | None = None

    def logged_like(self, other: Timing) -> dict[int, float]:
        """This run's per-step losses averaged over the windows the other run logged."""
        assert other.logged is not None
        means, previous = {}, 0
        for step in sorted(other.logged):
            window = self.losses[previous:step]
            means[step] = sum(window) / len(window)
            previous = step
        return means


def stamp() -> tuple[float, float]:
    """(wall, CPU) seconds now; on a GPU, once the queued work is done."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return clock(), cpu_clock()


def llmkit_side(run: Any, prepared: Any, shape: Shape, **overrides: Any) -> Timing:
    """llmkit's own path: training_arguments(recipe) + build_trainer(...) + Trainer.train()."""
    import torch
    from transformers import TrainerCallback

    from llmkit.pipeline import load_model
    from llmkit.trainer import build_trainer, training_arguments

    stamps: dict[int, tuple[float, float]] = {}
    window = (shape.warmup, shape.warmup + shape.steps)

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in window:
                stamps[state.global_step] = stamp()

    torch.manual_seed(run.recipe.training.seed)
    model = load_model(run)
    args = training_arguments(run.recipe, **overrides)
    start = clock()
    trainer = build_trainer(run.task, run.recipe, args, model, run.tokenizer, prepared, callbacks=[StepClock()])
    trainer.train()
    total = clock() - start
    logged = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
    return timing(stamps, shape, total, [], logged)


def plain_side(run: Any, prepared: Any, shape: Shape, bf16: bool = False) -> Timing:
    """The baseline: a hand-written PyTorch loop over a tensor of the same blocks (on the GPU when there is
    one, with bf16 autocast when asked, as the Trainer does)."""
    import torch

    from llmkit.pipeline import load_model

    seed = run.recipe.training.seed
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    model = load_model(run).to(device)
    model.train()
    start = clock()
    blocks = torch.as_tensor(prepared.train.with_format("numpy")["input_ids"][:], dtype=torch.long)
    learning_rate = run.recipe.training.learning_rate
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0, fused=True)
    last = shape.warmup + shape.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, (last - step) / last))
    losses = []
    stamps = {}
    per_epoch = len(blocks) // shape.batch
    for step in range(1, last + 1):
        # The Trainer's seedable sampler: a new permutation each epoch, seeded with seed + epoch.
        epoch, position = divmod(step - 1, per_epoch)
        if position == 0:
            order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed + epoch))
        batch = blocks[order[position * shape.batch : (position + 1) * shape.batch]].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if step in (shape.warmup, last):
            stamps[step] = stamp()
    total = clock() - start
    return timing(stamps, shape, total, [float(x) for x in losses])


def timing(stamps: dict[int, tuple[float, float]], shape: Shape, total: float, *losses: Any) -> Timing:
    """Tokens per wall second and per CPU second over the steps after warm-up."""
    tokens = shape.steps * shape.batch * shape.block
    (wall_start, cpu_start), (wall_end, cpu_end) = stamps[shape.warmup], stamps[shape.warmup + shape.steps]
    return Timing(tokens / (wall_end - wall_start), tokens / (cpu_end - cpu_start), total, *losses)


def prepare(shape: Shape, output_dir: str) -> tuple[Any, Any, str]:
    """Recipe → validated setup → packed features, through llmkit's pipeline (not timed)."""
    from llmkit import pipeline

    corpus, texts = documents()
    train_file = f"{output_dir}/corpus.txt"
    with open(train_file, "w", encoding="utf-8") as handle:
        handle.write("\n\n".join(texts))
    recipe = recipe_for(shape, train_file, f"{output_dir}/run")
    run = pipeline.setup(recipe)
    prepared = run.task.preprocess(recipe, run.raw, run.tokenizer)
    needed = (shape.warmup + shape.steps) * shape.batch
    if len(prepared.train) < needed:
        raise RuntimeError(f"corpus too small: {len(prepared.train)} blocks, need {needed}")
    return run, prepared, corpus


def loss_gap(ours: Timing, plain: Timing, block: int) -> float:
    """Largest relative difference between llmkit's logged losses and the plain loop's, window by window.

    transformers' Trainer divides a GPT-2 batch's summed loss by all label tokens, not by the `block - 1`
    that are predicted (it does not recognise GPT2LMHeadModel as a shifting causal LM), so its logged loss
    is (block - 1) / block of the mean; the gradient direction, and with clipping and Adam the update, is the same.
    """
    scale = (block - 1) / block
    expected = plain.logged_like(ours)
    logged = ours.logged or {}
    gaps = [abs(logged[step] - scale * expected[step]) / abs(scale * expected[step]) for step in logged]
    return max(gaps, default=float("nan"))


def run(quick: bool) -> list[Result]:
    shape = QUICK if quick else FULL
    with tempfile.TemporaryDirectory() as folder:
        setup, prepared, corpus = prepare(shape, folder)
        llmkit_side(setup, prepared, Shape(**{**shape.__dict__, "steps": 2, "warmup": 1}))  # warm-up run
        timings: dict[str, list[Timing]] = {"llmkit": [], "plain": []}

        def measure(name: str, side: Any) -> float:
            result = side(setup, prepared, shape)
            timings[name].append(result)
            return result.tokens_per_second

        rates = interleaved(
            {"llmkit": lambda: measure("llmkit", llmkit_side), "plain": lambda: measure("plain", plain_side)},
            shape.repeats,
        )
    ours, theirs = median(rates["llmkit"]), median(rates["plain"])
    cpu_ratio = median([t.tokens_per_cpu_second for t in timings["llmkit"]]) / median(
        [t.tokens_per_cpu_second for t in timings["plain"]]
    )
    gap = loss_gap(timings["llmkit"][0], timings["plain"][0], shape.block)
    model = f"GPT-2 {shape.layers}L/{shape.hidden}d, vocab {shape.vocab}, {shape.batch}×{shape.block} tokens/step"
    details = {
        "model": model,
        "corpus": corpus,
        "steps_timed": shape.steps,
        "warmup_steps": shape.warmup,
        "repeats": shape.repeats,
        "llmkit_tokens_per_second": rates["llmkit"],
        "plain_tokens_per_second": rates["plain"],
        "llmkit_tokens_per_cpu_second": [t.tokens_per_cpu_second for t in timings["llmkit"]],
        "plain_tokens_per_cpu_second": [t.tokens_per_cpu_second for t in timings["plain"]],
        "cpu_time_ratio": cpu_ratio,
        "llmkit_total_seconds": [t.total_seconds for t in timings["llmkit"]],
        "plain_total_seconds": [t.total_seconds for t in timings["plain"]],
        "max_relative_loss_gap": gap,
    }
    same = "same losses" if gap < 1e-3 else f"LOSSES DIFFER (max rel. gap {gap:.2g})"
    return [
        Result(
            "training loop tokens/s (vs plain PyTorch loop)",
            ours,
            theirs,
            unit="tok/s",
            goal=">= 0.95",
            key="train_throughput_ratio",
            note=f"{model}; {same}; CPU-time ratio {cpu_ratio:.3f}",
            details=details,
        )
    ]
