"""The matmuls and what surrounds them: CPU thread policy, reused block buffers, unit rows, upper-triangle row blocks.

Every similarity in the package is a float32 dot product computed here (``mm``); everything else is bookkeeping
between matmuls. Block sizes bound the extra memory: no similarity block holds more than ``BLOCK_ELEMENTS``
(per-frame graphs) or ``CACHE_BLOCK_ELEMENTS`` (temporal graph, merge, Gram matrices) entries. Cost: a matmul
[r, D] x [D, c] is r c D multiply-adds; the helpers here are O(size of their block).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

BLOCK_ELEMENTS = 1 << 23  # per-frame similarity entries computed in one bmm (frames per chunk = this // T^2)
CACHE_BLOCK_ELEMENTS = 1 << 21  # entries of one temporal / merge / Gram block: 8 MB, so the block stays in cache
# between the matmul writing it and the threshold or argmax reading it (measured at 32x196x896: merge blocks of
# 2^23 entries 0.26 s per compression, 2^21 0.23 s)
COL_ALIGN = 8  # blocks get a column count that is a multiple of this (zero rows appended to the right-hand operand,
# their columns ignored): MKL sgemm on AVX2 runs ~20 % slower when the output width is odd
TRIANGLE_BLOCKS = 8  # a graph over >= 1024 tokens is built in at least this many row blocks, each only against the
# columns from its own first row on: ~(1/2 + 1/16) of the full product

# CPU only: everything but the matmuls is memory-bound bookkeeping (thresholds, nonzero, unions, scatters) made of
# many short ops. With several threads each short op opens an OpenMP parallel region whose barrier waits a whole
# scheduler slice whenever another process holds a core (measured on a shared 2-core machine: 0.8 s on one thread
# vs 1.9 s on two at 32x196x896). So the bookkeeping runs on one thread and each matmul gets the caller's threads.
_MATMUL_THREADS: ContextVar[int | None] = ContextVar("scissor_scc_matmul_threads", default=None)


@contextmanager
def serial_bookkeeping(device: torch.device) -> Iterator[None]:
    """One CPU thread inside the block, except in ``mm`` and ``all_threads``; no-op on other devices."""
    n_threads = torch.get_num_threads()
    if device.type != "cpu" or n_threads == 1:
        yield
        return
    token = _MATMUL_THREADS.set(n_threads)
    try:
        torch.set_num_threads(1)
        yield
    finally:
        torch.set_num_threads(n_threads)
        _MATMUL_THREADS.reset(token)


@contextmanager
def all_threads() -> Iterator[None]:
    """The caller's threads back inside ``serial_bookkeeping``: for matmuls and for passes over millions of entries,
    where one op lasts milliseconds and a barrier wait is small against it."""
    n_threads = _MATMUL_THREADS.get()
    if n_threads is None:
        yield
        return
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(1)


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """matmul (batched too) with the caller's CPU threads."""
    with all_threads():
        return torch.matmul(a, b, out=out)


class Blocks:
    """Reused block buffers, one per dtype. A fresh ~32 MB block per step makes glibc grow its heap instead of
    reusing memory: 1.5 GB of RSS was left after a 256-frame merge with fresh blocks, 50 MB with these."""

    def __init__(self, device: torch.device):
        self.device = device
        self.buffers: dict[torch.dtype, torch.Tensor] = {}

    def get(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n = math.prod(shape)
        buf = self.buffers.get(dtype)
        if buf is None or buf.numel() < n:
            buf = self.buffers[dtype] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)

    def above(self, sim: torch.Tensor, tau: float) -> torch.Tensor:
        """sim > tau into the reused bool buffer."""
        return torch.gt(sim, tau, out=self.get(tuple(sim.shape), torch.bool))


def aligned(n: int) -> int:
    """n rounded up to a multiple of COL_ALIGN."""
    return n + (-n % COL_ALIGN)


def unit(x: torch.Tensor, extra: int = 0) -> torch.Tensor:
    """[n, D] -> [n + extra, D]: rows scaled to unit length, zero rows stay zero (cosine 0 with everything, never
    NaN); ``extra`` zero rows appended so slices can be widened to aligned matmul widths."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    inv = torch.where(norm > 0, norm, torch.ones_like(norm)).reciprocal_()
    n = x.shape[0]
    if extra == 0:
        return x * inv
    out = torch.empty((n + extra, x.shape[1]), dtype=x.dtype, device=x.device)
    out[n:].zero_()
    torch.mul(x, inv, out=out[:n])
    return out


def triangle_blocks(n: int) -> Iterator[tuple[int, int, int]]:
    """Row blocks (r0, r1, width) of the upper triangle of an n x n product: rows [r0, r1) against columns
    [r0, r0 + width), width = aligned(n - r0), at most about CACHE_BLOCK_ELEMENTS entries per block."""
    n_blocks = max(math.ceil(n * n / CACHE_BLOCK_ELEMENTS), TRIANGLE_BLOCKS if n >= 1024 else 1)
    step = math.ceil(n / n_blocks)
    for r0 in range(0, n, step):
        yield r0, min(r0 + step, n), aligned(n - r0)
