"""Evaluation work spread over the processes of a run: each does its share, every process gets all results.

Generation and answer-span search run after the Trainer's own (already distributed) loop; without this,
every process would redo all of it. The unit of work is a chunk (a generation batch, a group of
questions) taken round-robin, so one process and N processes compute the very same chunks and their
results agree to the bit; they come back in chunk order, each exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Chunk = TypeVar("Chunk")
Result = TypeVar("Result")


def process_group() -> tuple[int, int]:
    """(rank, world size) of the running process group; (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def spread(chunks: Sequence[Chunk], work: Callable[[Chunk], Result], lockstep: bool = False) -> list[Result]:
    """`[work(c) for c in chunks]`, with process r doing chunks r, r+N, ... and the results gathered to all.

    Every process of the group must call it (the gather is collective). `lockstep`: every process runs the
    same number of chunks (repeating one and dropping its result), for models whose forward pass is itself
    collective (FSDP, DeepSpeed ZeRO-3).
    """
    rank, size = process_group()
    if size == 1:
        return [work(chunk) for chunk in chunks]
    import torch.distributed as dist

    mine = list(range(rank, len(chunks), size))
    results: dict[int, Any] = {index: work(chunks[index]) for index in mine}
    if lockstep and chunks:
        for _ in range(-(-len(chunks) // size) - len(mine)):
            work(chunks[mine[-1] if mine else 0])
    gathered: list[dict[int, Any] | None] = [None] * size
    dist.all_gather_object(gathered, results)
    merged: dict[int, Any] = {}
    for part in gathered:
        merged.update(part or {})
    return [merged[index] for index in range(len(chunks))]


def forward_is_collective(model: Any) -> bool:
    """Whether the model's weights are sharded across processes, so each forward pass needs all of them."""
    from transformers.integrations import is_deepspeed_zero3_enabled
    from transformers.integrations.fsdp import is_fsdp_managed_module

    return bool(is_deepspeed_zero3_enabled() or is_fsdp_managed_module(model))
