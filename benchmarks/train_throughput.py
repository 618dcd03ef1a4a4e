"""Training-loop overhead: llmkit's Trainer (built by llmkit.trainer) vs a plain PyTorch loop.

Both sides train the same GPT-2 (built from config, same initial weights, dropout off) on the same packed
blocks in the same order (the Trainer's seedable sampler draws `randperm(n, seed + epoch)`; the plain loop
does the same), with the same fused AdamW, linear schedule and gradient clipping. Because the computation is
the same, the losses must agree; the benchmark checks that before it reports a ratio.

On the CPU the two loops run in lockstep: after each Trainer step (a callback), the plain loop takes its own
step, so both see the same machine at the same moments, and a busy machine slows both alike. llmkit's step
time is everything between the end of one plain step and the end of its next step (data loading, collation,
forward, backward, optimizer, logging, callbacks); the plain step time is its own step. Throughput is summed
over the steps after a warm-up. On a GPU (benchmarks/gpu.py) the two run one after the other instead, since a
per-step synchronisation would change what is measured.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

from benchmarks.common import Result, clock, documents, median


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


QUICK = Shape(layers=2, hidden=128, heads=4, block=128, batch=16, vocab=4000, warmup=2, steps=16, repeats=4)
FULL = Shape(layers=4, hidden=256, heads=4, block=256, batch=8, vocab=8000, warmup=5, steps=40, repeats=5)


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


class PlainLoop:
    """The baseline: a hand-written PyTorch loop over a tensor of the same blocks (on the GPU when there is
    one, with bf16 autocast when asked, as the Trainer does)."""

    def __init__(self, run: Any, prepared: Any, shape: Shape, bf16: bool = False) -> None:
        import torch

        from llmkit.pipeline import load_model

        self.seed = run.recipe.training.seed
        self.batch = shape.batch
        self.bf16 = bf16
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(self.seed)
        self.model = load_model(run).to(self.device)
        self.model.train()
        self.blocks = torch.as_tensor(prepared.train.with_format("numpy")["input_ids"][:], dtype=torch.long)
        self.per_epoch = len(self.blocks) // shape.batch
        self.order = torch.arange(len(self.blocks))
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=run.recipe.training.learning_rate, weight_decay=0.0, fused=True
        )
        last = shape.warmup + shape.steps
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: max(0.0, (last - step) / last))
        self.losses: list[Any] = []

    def step(self, number: int) -> None:
        """Training step `number` (from 1)."""
        import torch

        epoch, position = divmod(number - 1, self.per_epoch)
        if position == 0:  # the Trainer's seedable sampler: a new permutation each epoch, seeded seed + epoch
            self.order = torch.randperm(len(self.blocks), generator=torch.Generator().manual_seed(self.seed + epoch))
        rows = self.order[position * self.batch : (position + 1) * self.batch]
        batch = self.blocks[rows].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(loss.detach())


@dataclass
class Timing:
    """Tokens/s of one training run over the steps after warm-up, and what it logged."""

    tokens_per_second: float
    total_seconds: float
    logged: dict[int, float]


def logged_losses(trainer: Any) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


def stamp() -> float:
    """Seconds now; on a GPU, once the queued work is done."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return clock()


def build(run: Any, prepared: Any, callbacks: list[Any], **overrides: Any) -> Any:
    """llmkit's own path: training_arguments(recipe) + build_trainer(...), on the same initial weights."""
    import torch

    from llmkit.pipeline import load_model
    from llmkit.trainer import build_trainer, training_arguments

    torch.manual_seed(run.recipe.training.seed)
    model = load_model(run)
    args = training_arguments(run.recipe, **overrides)
    return build_trainer(run.task, run.recipe, args, model, run.tokenizer, prepared, callbacks=callbacks)


def llmkit_side(run: Any, prepared: Any, shape: Shape, **overrides: Any) -> Timing:
    """llmkit's Trainer alone, timed between the end of the warm-up and the last step."""
    from transformers import TrainerCallback

    stamps: dict[int, float] = {}
    window = (shape.warmup, shape.warmup + shape.steps)

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in window:
                stamps[state.global_step] = stamp()

    start = clock()
    trainer = build(run, prepared, [StepClock()], **overrides)
    trainer.train()
    tokens = shape.steps * shape.batch * shape.block
    return Timing(tokens / (stamps[window[1]] - stamps[window[0]]), clock() - start, logged_losses(trainer))


def plain_side(run: Any, prepared: Any, shape: Shape, bf16: bool = False) -> tuple[Timing, list[float]]:
    """The plain loop alone, timed like llmkit_side; also returns its per-step losses."""
    start = clock()
    loop = PlainLoop(run, prepared, shape, bf16)
    stamps = {}
    for number in range(1, shape.warmup + shape.steps + 1):
        loop.step(number)
        if number in (shape.warmup, shape.warmup + shape.steps):
            stamps[number] = stamp()
    tokens = shape.steps * shape.batch * shape.block
    rate = tokens / (stamps[shape.warmup + shape.steps] - stamps[shape.warmup])
    return Timing(rate, clock() - start, {}), [float(x) for x in loop.losses]


def lockstep(run: Any, prepared: Any, shape: Shape) -> tuple[float, float, float]:
    """One Trainer run with the plain loop stepping inside it.

    Returns the seconds llmkit and the plain loop took for the steps after warm-up, and the loss gap."""
    from transformers import TrainerCallback

    loop = PlainLoop(run, prepared, shape)
    ours: dict[int, float] = {}
    theirs: dict[int, float] = {}

    class Lockstep(TrainerCallback):
        mark: float | None = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = clock()
            if self.mark is not None:
                ours[state.global_step] = now - self.mark
            loop.step(state.global_step)
            theirs[state.global_step] = clock() - now
            self.mark = clock()

    trainer = build(run, prepared, [Lockstep()])
    trainer.train()
    window = range(shape.warmup + 1, shape.warmup + shape.steps + 1)
    gap = loss_gap(logged_losses(trainer), [float(x) for x in loop.losses])
    return sum(ours[k] for k in window), sum(theirs[k] for k in window), gap


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


def loss_gap(logged: dict[int, float], losses: list[float]) -> float:
    """Largest relative difference between the Trainer's logged losses and the plain loop's per-step losses
    averaged over the same windows.

    Both are the mean over the `block - 1` predicted tokens of each row: llmkit names GPT-2's causal loss
    (`models.name_causal_loss`), without which transformers' Trainer divides by all `block` label tokens.
    """
    gaps, previous = [], 0
    for step in sorted(logged):
        window = losses[previous:step]
        if len(window) == step - previous:
            expected = sum(window) / len(window)
            gaps.append(abs(logged[step] - expected) / abs(expected))
        previous = step
    return max(gaps, default=float("nan"))


def run(quick: bool) -> list[Result]:
    shape = QUICK if quick else FULL
    with tempfile.TemporaryDirectory() as folder:
        setup, prepared, corpus = prepare(shape, folder)
        lockstep(setup, prepared, Shape(**{**shape.__dict__, "steps": 2, "warmup": 1}))  # warm-up run
        runs = [lockstep(setup, prepared, shape) for _ in range(shape.repeats)]
    # Pooled over every timed step of every run: a mean, so periodic costs (logging) count in full.
    tokens = shape.repeats * shape.steps * shape.batch * shape.block
    ours, theirs = tokens / sum(r[0] for r in runs), tokens / sum(r[1] for r in runs)
    per_run = [r[1] / r[0] for r in runs]  # llmkit tok/s ÷ plain tok/s = plain seconds ÷ llmkit seconds
    gap = max(r[2] for r in runs)
    model = f"GPT-2 {shape.layers}L/{shape.hidden}d, vocab {shape.vocab}, {shape.batch}×{shape.block} tokens/step"
    details = {
        "model": model,
        "corpus": corpus,
        "method": "lockstep: the plain loop steps inside the Trainer run, after each Trainer step",
        "steps_timed": shape.steps,
        "warmup_steps": shape.warmup,
        "repeats": shape.repeats,
        "llmkit_seconds_per_run": [r[0] for r in runs],
        "plain_seconds_per_run": [r[1] for r in runs],
        "ratio_per_run": per_run,
        "median_ratio_per_run": median(per_run),
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
            note=f"{model}; lockstep, {shape.repeats} runs × {shape.steps} steps pooled; {same}",
            details=details,
        )
    ]
