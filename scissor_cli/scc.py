"""LLaVA-Scissor's Semantic Connected Components (SCC): compress one video's visual tokens.

This module is the algorithm of ``/work/shared/SCC.md`` as a pure tensor function: tokens ``[F, T, D]`` in,
kept tokens ``[M, D]`` plus per-step counts out. No I/O, no global RNG (an explicit ``torch.Generator``).

The parts, named after the paper:

* **similarity graph** -- cosine similarity in float32 (whatever the input dtype); adjacency ``cos > tau``
  (strict), diagonal included; a zero vector has cosine 0 with everything.
* **connected components** -- min-label union of the graph's edges: every root hooks onto the smallest root it
  touches (``scatter_reduce amin``), then ``ceil(log2 N)`` pointer jumps flatten the forest. One host sync per
  round (the "all edges settled?" test); rounds are few (O(log N) in practice). In the sampled regime
  (``N' = min(N, ceil(ln N / eps^2)) < N``) only the edges of ``N'`` sampled vertices are unioned, so
  vertices that are neither sampled nor adjacent to a sample stay singletons. Component members are all
  vertices with that root (SCC.md fix 2); components are ordered by the index of their highest-degree member
  (degree in the full A, ties to the lowest index). Each component becomes the plain mean of its members.
* **spatial step** -- SCC per frame, batched over all frames at once (``[F, T, T]`` via ``bmm``, chunked at
  ``BLOCK_ELEMENTS`` similarities), all frames' edges unioned in one forest over F*T global ids.
* **temporal step** -- one global SCC over the spatial output ``[M1, D]``, built in row blocks: block rows
  ``[r0, r1)`` are compared with columns ``r0..M1`` only (the upper triangle, ~56 % of the full product with the
  default 8+ blocks), at most ``CACHE_BLOCK_ELEMENTS`` (2^21) similarities at a time, block widths padded to a
  multiple of ``COL_ALIGN`` (8) for the matmul; each block's edges are unioned
  into the running forest and the block is dropped. So no ``M1 x M1`` matrix exists past sqrt(2^21) ~ 1,448
  tokens, in particular never past 8,192.
* **merge** -- every original token goes to its most similar kept token (argmax cosine, ties to the lowest
  index, ``_argmax_rows``); kept_j <- (kept_j + sum of its originals) / (count_j + 1). On CPU the argmax is
  certified instead of scored in full (``_Video._assign_by_candidates``): each original starts at its *anchor*,
  the kept token its own components led to, and by the triangle inequality on the sphere only kept tokens within
  twice its angle from the anchor can beat it. The kept tokens' Gram matrix (M^2 D, and only for anchors the
  temporal graph does not already settle, see ``_isolated_kept``) gives each anchor its candidates; originals whose
  anchor has none are done, the rest are scored against their candidates only. Exact (same argmax, same ties);
  at 32x196x896, tau 0.9 it replaces ~97 % of the N M D merge work. Elsewhere (GPU, or under
  ``CANDIDATE_MIN_KEPT`` kept tokens) every score is computed, in row blocks like the temporal step.

Cosines are dot products rescaled by precomputed inverse norms (no normalised copy of the [N, D] tokens). On
CPU the bookkeeping between matmuls runs on one thread (see ``_serial_bookkeeping``).

Sampling: ``draw_sample`` draws each sampled vertex set from ``generator`` on the generator's own device
(a CPU generator works for CUDA tokens; indices are moved over). Draw order: the spatial step's samples
(one set per frame, only when ``T' < T``) and then the temporal step's (only when ``M1' < M1``). With
``generator=None`` a fresh CPU generator seeded with 0 is used, so the output is always reproducible.

Token budget (``budget=``): the similarity matrices do not depend on tau, and for tau' <= tau every spatial
component at tau' is a union of spatial components at tau (the threshold graph only gains edges). So the
search computes the per-frame similarities once, and the Gram matrix of the spatial component *sums* once at
the first candidate (the ``tau`` argument); the temporal similarities at any lower tau are that Gram matrix
summed over the coarser components (``O(M1^2)``, no ``D``), and the count at each candidate is a
connected-components run on it. The search shrinks the bracket [feasible tau, too-high tau] until M lands in
``[0.9 B, B]`` or the bracket is below float resolution; whenever a candidate becomes the bracket's top, its
smaller aggregated Gram matrix becomes the base. Candidates (``_next_candidate``): near the answer M grows like
M1^k, k fitted through the bracket's counted ends (else the last two counts, else ``K_GUESS``); the spatial
count that would give 0.95 B is found with a few spatial-only counts (no matmul: the per-frame similarities are
kept; Illinois regula falsi on log M1 against ``log(1.001 - tau)``). Fallbacks: regula falsi on log M where M1
does not move, a bisection when one end moves twice running. The answer is the highest feasible tau found, and
the final compression runs at it exactly as a plain call would (``compress(x, tau=out.tau,
tau_temporal=out.tau_temporal)`` gives the same tokens). Candidates above the base, candidates whose spatial
output exceeds ``DENSE_LIMIT`` tokens, and all candidates when the spatial step is itself sampled (components
then do not nest) are counted directly: one blockwise temporal pass each, at most ``MAX_DIRECT_EVALS``.
Measured (bench/results_scc.md): 32x196x896 at 10 %: 1.8x a plain compression at tau 0.9 (64 frames: 1.9x);
256 frames: 2 direct passes, 2.2x. In the sampled regime M jumps as tau moves (the sample changes with M1), so
only ``M <= B`` is guaranteed there. How tau_temporal interacts with a budget: if ``tau_temporal`` is None, one
tau is searched and used by both steps; if it is given, it stays fixed and only the spatial tau is searched, and
a budget that even one token per frame exceeds after that temporal step raises OptionError.

Complexity (N = F*T tokens, M1 spatial tokens, M kept tokens, E edges, D width, B = BLOCK_ELEMENTS = 2^23; in the
certified merge M_a <= M anchors need Gram rows and "pairs" = sum over open anchors of rows x candidates):

=============  ================================  =============================================================
step           time                              extra memory
=============  ================================  =============================================================
spatial        O(F T^2 D) (bmm)                  O(F T^2) similarities, at most max(T^2, B) at once
temporal       ~0.56 M1^2 D (upper triangle)     O(min(M1^2, B) + M1): one block of similarities + its edges
components     O(E) per round, O(log N) rounds   O(N + E_block)
merge          O(N M D) worst case; certified:   O(min(N M, B)); certified: O(N + pairs + 2^21)
               O(N D + M_a M D + pairs D)
budget search  spatial bmm once, one Gram         O(F T^2 + M1^2) for M1 <= DENSE_LIMIT (the Gram matrix);
               O(M1^2 D), then O(F T^2 + M1^2)   above it each candidate is a blockwise temporal pass
               per candidate (no D); final run
=============  ================================  =============================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from scissor_cli.errors import OptionError

BLOCK_ELEMENTS = 1 << 23  # similarity entries per block: rows per block = BLOCK_ELEMENTS // N (>= 1), so a
# graph over more than sqrt(2^23) ~ 2,896 tokens (and any past 8,192) is built in row blocks, never N x N
DENSE_LIMIT = 8192  # the budget search keeps an M1 x M1 Gram matrix only up to this many spatial tokens
MAX_SEARCH_EVALS = 48  # cheap (Gram-aggregated) candidate evaluations in the budget search
MAX_DIRECT_EVALS = 10  # candidate evaluations that need a fresh temporal matmul each


@dataclass(frozen=True)
class CompressionResult:
    tokens: torch.Tensor  # [M, D], the input's device and dtype
    n_input: int  # F * T
    n_spatial: int  # M1, tokens after the spatial step
    n_output: int  # M
    tau: float  # spatial tau actually used (the searched one in budget mode)
    tau_temporal: float  # temporal tau actually used
    epsilon: float
    budget: int | None  # token budget resolved to a count, None without a budget
    spatial_per_frame: list[int]  # [F], kept per frame by the spatial step
    assignment: torch.Tensor  # [F*T] long: index of the kept token each original token merged into

    @property
    def retention(self) -> float:
        return self.n_output / self.n_input


# ---------------------------------------------------------------------------------------------------- checks


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_tokens(tokens: object) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise OptionError(
            f"tokens must be a torch.Tensor, got {type(tokens).__name__}",
            hint="pass the video features as a [F, T, D] float tensor",
        )
    if tokens.ndim != 3:
        raise OptionError(
            f"tokens must have 3 dims [F, T, D], got shape {tuple(tokens.shape)}",
            hint="one video at a time: frames x tokens per frame x width",
        )
    if tokens.numel() == 0:
        raise OptionError(f"tokens are empty, shape {tuple(tokens.shape)}", hint="F, T and D must all be >= 1")
    if not tokens.is_floating_point():
        raise OptionError(f"tokens must be floating point, got {tokens.dtype}", hint="cast with .float()")


def _check_tau(name: str, tau: object) -> float:
    if not _is_real(tau):
        raise OptionError(
            f"{name} = {tau!r} is not a finite number",
            hint=f"{name} is a cosine threshold, usually 0.8 to 0.95 (>= 1 keeps every token)",
        )
    return float(tau)


def _check_epsilon(epsilon: object) -> float:
    if not _is_real(epsilon) or not 0 < epsilon <= 1:
        raise OptionError(f"epsilon = {epsilon!r} is out of range", hint="epsilon must be in (0, 1] (paper: 0.05)")
    return float(epsilon)


def _resolve_budget(budget: object, n_input: int) -> int | None:
    """A float in (0, 1] is a ratio of F*T (rounded down, at least 1 token); an int >= 1 is a count."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise OptionError(
            f"budget = {budget!r} is not a number",
            hint="a retention ratio in (0, 1] (e.g. 0.1) or a token count >= 1 (e.g. 600)",
        )
    if isinstance(budget, float):
        if not math.isfinite(budget) or not 0 < budget <= 1:
            raise OptionError(
                f"budget = {budget!r} is not a ratio in (0, 1]",
                hint="give a fraction such as 0.1 for 10 %, or an integer token count",
            )
        return max(1, math.floor(budget * n_input + 1e-9))
    if budget < 1:
        raise OptionError(f"budget = {budget!r} tokens is below 1", hint="a token budget must be >= 1")
    return int(budget)


# ---------------------------------------------------------------------------------------------- sampling


def sample_size(n: int, epsilon: float) -> int:
    """N' = min(N, ceil(ln(N) / epsilon^2)); N' = N means exact components."""
    if n <= 1:
        return n
    return min(n, math.ceil(math.log(n) / epsilon**2))


def draw_sample(n: int, n_sample: int, generator: torch.Generator, n_sets: int = 1) -> torch.Tensor:
    """[n_sets, n_sample] vertex indices, each row uniform without replacement, on the generator's device.

    Random float64 keys sorted per row (a batched randperm); shared with the slow reference in the tests so
    both use the same sample.
    """
    keys = torch.rand((n_sets, n), generator=generator, device=generator.device, dtype=torch.float64)
    return keys.argsort(dim=1)[:, :n_sample]


def _sample_mask(n: int, epsilon: float, generator: torch.Generator, n_sets: int, device) -> torch.Tensor | None:
    """[n_sets, n] bool, True for sampled vertices; None in the exact regime (nothing drawn)."""
    n_sample = sample_size(n, epsilon)
    if n_sample >= n:
        return None
    idx = draw_sample(n, n_sample, generator, n_sets).to(device)
    mask = torch.zeros((n_sets, n), dtype=torch.bool, device=device)
    return mask.scatter_(1, idx, True)


def _clone(generator: torch.Generator) -> torch.Generator:
    g = torch.Generator(device=generator.device)
    g.set_state(generator.get_state())
    return g


# ------------------------------------------------------------------------------------ similarity & components

# CPU only: everything but the similarity matmuls is memory-bound bookkeeping (thresholds, nonzero, unions,
# scatters) made of many short ops. With the caller's thread count, each short op opens an OpenMP parallel
# region whose barrier waits a whole scheduler slice whenever another process holds a core: measured on the
# shared 2-core CI box, 0.8 s single-threaded vs 1.9 s with 2 threads at 32x196x896. So the bookkeeping runs on
# one thread and each matmul gets the caller's threads back (set_num_threads costs well under a microsecond).
_MATMUL_THREADS: ContextVar[int | None] = ContextVar("scissor_scc_matmul_threads", default=None)


@contextmanager
def _serial_bookkeeping(device: torch.device) -> Iterator[None]:
    n_threads = torch.get_num_threads()
    if device.type != "cpu" or n_threads == 1:
        yield
        return
    token = _MATMUL_THREADS.set(n_threads)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n_threads)
        _MATMUL_THREADS.reset(token)


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """matmul (batched too) with the caller's CPU threads, see _serial_bookkeeping."""
    with _all_threads():
        return torch.matmul(a, b, out=out)


@contextmanager
def _all_threads() -> Iterator[None]:
    """The caller's CPU threads back inside _serial_bookkeeping: for matmuls, and for passes over millions of
    entries (the budget search's dense Gram work), where one op lasts milliseconds and a barrier wait is small
    against it (measured at 2,300 x 3,426: 52 ms of scatters, divides, thresholds and nonzero on 1 thread, 30 on 2)."""
    n_threads = _MATMUL_THREADS.get()
    if n_threads is None:
        yield
        return
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(1)


class _Blocks:
    """Reused similarity / adjacency block buffers. A fresh ~32 MB block per step makes glibc grow its heap
    instead of reusing memory (its mmap threshold adapts to freed blocks): measured 1.5 GB of RSS left after
    the 256-frame merge with fresh blocks, 50 MB with these."""

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


COL_ALIGN = 8  # similarity blocks get a column count that is a multiple of this (zero rows appended to the
# right-hand operand, their columns ignored): MKL sgemm on AVX2 runs ~20 % slower when the output width is odd,
# e.g. [428, 896] x [896, 3426] at 146 GFLOP/s vs 175 at 3432 on the 2-core CI box


def _unit(x: torch.Tensor, extra: int = 0) -> torch.Tensor:
    """Rows scaled to unit length; zero rows stay zero (so their cosine with everything is 0, never NaN).
    extra > 0: that many zero rows are appended (so slices can be widened to aligned matmul widths)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    inv = torch.where(norm > 0, norm, torch.ones_like(norm)).reciprocal_()
    n = x.shape[0]
    n_pad = n + extra
    if n_pad == n:
        return x * inv
    out = torch.empty((n_pad, x.shape[1]), dtype=x.dtype, device=x.device)
    out[n:].zero_()
    torch.mul(x, inv, out=out[:n])
    return out


def _block_edges(adj: torch.Tensor, row0: int, offset: int, in_sample: torch.Tensor | None):
    """Edges and degrees of a block of adjacency rows.

    adj: [C, R, n] bool, rows row0..row0+R of C graphs with n vertices each (C > 1 only for frames).
    Vertex ids are global: offset + c * n + local id. Exact regime: each edge once (i < j). Sampled regime
    (in_sample [C, R]): every edge of a sampled row, i.e. each sample joined with all its neighbours.
    Returns (u [E], v [E], degree [C*R]); degree counts the diagonal once (it is in A by definition).
    One pass over the block (nonzero); everything after it is O(edges).
    """
    c, r, n = adj.shape
    graph, row, col = adj.nonzero().unbind(1)  # both directions, diagonal included
    row = row + row0
    off = row != col
    flat_row = graph * r + row - row0  # [E'] row index within the block
    degree = torch.bincount(flat_row[off], minlength=c * r) + 1
    if in_sample is None:
        keep = row < col
    else:
        keep = off & in_sample.reshape(-1).index_select(0, flat_row)
    base = offset + graph[keep] * n
    return base + row[keep], base + col[keep], degree


def _union(labels: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> None:
    """Union edges (u, v) into the flat forest ``labels`` (in place; every entry points at its root, the
    smallest vertex of its component). One host sync per round."""
    if u.numel() == 0:
        return
    n_jumps = max(1, math.ceil(math.log2(labels.numel())))
    # index_select, not labels[u]: advanced indexing runs a parallel region even for tiny index tensors,
    # which costs milliseconds per call when the cores are shared
    while True:
        ru, rv = labels.index_select(0, u), labels.index_select(0, v)
        if torch.equal(ru, rv):
            return
        # a root hooks onto the smallest root it meets; settled edges are no-ops (lab[r] = min(r, r))
        labels.scatter_reduce_(0, torch.maximum(ru, rv), torch.minimum(ru, rv), reduce="amin")
        for _ in range(n_jumps):  # chains are at most N long: log2(N) doublings flatten them
            labels.copy_(labels.index_select(0, labels))


def _order(labels: torch.Tensor, degree: torch.Tensor):
    """Component ids in output order: by the index of the highest-degree member (ties: lowest index).

    labels, degree: [N]. Returns (comp [N] long in 0..K-1, rep [K] long: each component's representative).
    """
    n = labels.numel()
    ids = torch.arange(n, device=labels.device)
    key = degree.long() * n + (n - 1 - ids)  # larger degree first, then smaller index
    best = torch.full((n,), -1, dtype=torch.long, device=labels.device).scatter_reduce_(0, labels, key, "amax")
    roots = (labels == ids).nonzero().squeeze(1)
    rep = n - 1 - best.index_select(0, roots) % n
    rep, order = rep.sort()
    slot = torch.empty(n, dtype=torch.long, device=labels.device)
    slot.scatter_(0, roots.index_select(0, order), torch.arange(roots.numel(), device=labels.device))
    return slot.index_select(0, labels), rep


def _sum_rows(x: torch.Tensor, index: torch.Tensor, n_rows: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """[N, D] -> [n_rows, D]: row i added into row index[i] (of ``out`` if given). scatter_add with an expanded
    index: on CPU it is ~15x faster than index_add_ over rows."""
    if out is None:
        out = torch.zeros((n_rows, x.shape[1]), dtype=x.dtype, device=x.device)
    return out.scatter_add_(0, index[:, None].expand(-1, x.shape[1]), x)


def _means(x: torch.Tensor, comp: torch.Tensor, n_comp: int) -> torch.Tensor:
    """[N, D] members -> [K, D] plain means (float32)."""
    sums = _sum_rows(x, comp, n_comp)
    counts = torch.bincount(comp, minlength=n_comp).to(x.dtype)
    return sums.div_(counts[:, None])


def _spatial_graph(
    sims, n_frames: int, n_per_frame: int, tau: float, in_sample: torch.Tensor | None, device, blocks: _Blocks
):
    """Per-frame components of all frames as one forest over F*T global ids. sims: iterable of (f0, [c,T,T])."""
    n = n_frames * n_per_frame
    labels = torch.arange(n, device=device)
    degrees = []
    for f0, sim in sims:
        c = sim.shape[0]
        if tau >= 1:  # cos <= 1: nothing but the diagonal is adjacent
            degrees.append(torch.ones(c * n_per_frame, dtype=torch.long, device=device))
            continue
        mask = None if in_sample is None else in_sample[f0 : f0 + c]
        u, v, deg = _block_edges(blocks.above(sim, tau), 0, f0 * n_per_frame, mask)
        degrees.append(deg)
        _union(labels, u, v)
    return labels, torch.cat(degrees)


ARGMAX_CHUNK = 64
CACHE_BLOCK_ELEMENTS = 1 << 21  # the merge's and the temporal triangle's similarity blocks hold at most this many
# entries (8 MB, so the block stays in cache between the matmul writing it and the argmax / threshold reading it):
# measured at 32x196x896, merge blocks of 2^23 entries 0.26 s per compression, 2^21 0.23 s


def _argmax_rows(sim: torch.Tensor) -> torch.Tensor:
    """sim [R, M] -> [R] long: index of each row's maximum, the first one on ties (as ``argmax(dim=1)``).

    Two levels: the maximum of each run of ARGMAX_CHUNK columns (a vectorised amax), the first chunk holding the
    row maximum, then the first maximum inside that chunk. Same result as argmax (the first chunk reaching the
    row maximum holds its first occurrence), ~2.3x faster on CPU, where argmax is not vectorised.
    """
    r, m = sim.shape
    w = ARGMAX_CHUNK
    if m < 2 * w or sim.stride(1) != 1:
        return sim.argmax(dim=1)
    n_full = m // w
    chunk_max = sim[:, : n_full * w].unflatten(1, (n_full, w)).amax(dim=2)  # [R, n_full]
    if n_full * w < m:
        chunk_max = torch.cat([chunk_max, sim[:, n_full * w :].amax(dim=1, keepdim=True)], dim=1)
    chunk = chunk_max.argmax(dim=1)  # [R]
    cols = (chunk[:, None] * w + torch.arange(w, device=sim.device)).clamp_max_(m - 1)  # [R, w]
    first = sim.gather(1, cols).argmax(dim=1, keepdim=True)  # clamped duplicates of column m-1 come after it
    return cols.gather(1, first).squeeze(1)


CANDIDATE_MIN_KEPT = 64  # the merge certifies candidates (_assign_by_candidates) on CPU from this many kept tokens
CANDIDATE_MARGIN = 1e-4  # slack on the candidate test (float32 cosine errors are ~1e-6): more candidates, same answer
GROUP_OVERHEAD = 2_000_000  # one per-anchor scoring step costs about this many multiply-adds of a big matmul
SMALL_MM_PENALTY = 5  # and its small matmul runs about this many times slower per multiply-add
RIVAL_ROWS_MAX = 0.56  # fewer anchors than this fraction of M ask for rivals: their Gram rows, else the triangle


def _block_rows(n_cols: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(1, n_cols))


TRIANGLE_BLOCKS = 8  # a graph over >= 1024 tokens is built in at least this many row blocks, each only against
# the columns from its own first row on (the upper triangle): ~(1/2 + 1/16) of the full matmul


def _rows_graph(rows: torch.Tensor, tau: float, in_sample: torch.Tensor | None, blocks: _Blocks | None = None):
    """Components of one graph over rows [n, D] (cosine similarity) -> (labels [n], degree [n]).

    Row block [r0, r1) is compared with columns r0..n only (cosine is symmetric), at most CACHE_BLOCK_ELEMENTS
    similarities at a time (widths padded to COL_ALIGN); degrees count each edge at both ends. Sampled regime
    (in_sample [1, n]): only edges with a sampled end are unioned (each sample joined with all its neighbours).
    """
    n = rows.shape[0]
    device = rows.device
    blocks = blocks if blocks is not None else _Blocks(device)
    labels = torch.arange(n, device=device)
    degree = torch.ones(n, dtype=torch.long, device=device)  # the diagonal
    if tau >= 1:
        return labels, degree
    unit = _unit(rows, COL_ALIGN - 1)  # [n + COL_ALIGN - 1, D], zero rows past n
    n_blocks = max(math.ceil(n * n / CACHE_BLOCK_ELEMENTS), TRIANGLE_BLOCKS if n >= 1024 else 1)
    step = math.ceil(n / n_blocks)
    for r0 in range(0, n, step):
        a = unit[r0 : min(r0 + step, n)]
        width = -(-(n - r0) // COL_ALIGN) * COL_ALIGN  # r0 + width < n + COL_ALIGN
        sim = _mm(a, unit[r0 : r0 + width].T, out=blocks.get((a.shape[0], width)))[:, : n - r0]  # [b, n - r0]
        u, v = _triangle_edges(blocks.above(sim, tau), r0)
        degree += torch.bincount(u, minlength=n) + torch.bincount(v, minlength=n)
        _union(labels, *_sampled_edges(u, v, in_sample))
    return labels, degree


def _triangle_edges(adj: torch.Tensor, r0: int):
    """Edges (u < v, global ids) of an adjacency block [b, n - r0]: rows r0..r0+b against columns r0..n."""
    row, col = adj.nonzero().unbind(1)
    keep = row < col  # strictly above the diagonal
    return row[keep] + r0, col[keep] + r0


def _sampled_edges(u: torch.Tensor, v: torch.Tensor, in_sample: torch.Tensor | None):
    """The edges that count in the sampled regime (in_sample [1, n]): those with a sampled end (each sample joined
    with all its neighbours); all of them in the exact regime (in_sample None)."""
    if in_sample is None:
        return u, v
    sampled = in_sample[0]
    keep = sampled.index_select(0, u) | sampled.index_select(0, v)
    return u[keep], v[keep]


def _isolated_kept(spatial: torch.Tensor, comp: torch.Tensor, degree: torch.Tensor, kept: torch.Tensor, tau: float):
    """Kept tokens whose every rival is provably far: (isolated [M] bool, bound).

    A spatial token s_p with no neighbour in the temporal graph (degree 1: the diagonal) is a kept token of its own
    and has cosine <= tau with every other spatial token s_l. Any other kept token is a mean k_j of such s_l, so
    cos(s_p, k_j) <= tau * rho_j with rho_j = (mean |s_l| over its members) / |k_j| >= 1 (a zero k_j: cosine 0).
    bound = max_j of that (plus a float32 slack), the same for every isolated token.
    """
    m = kept.shape[0]
    isolated = torch.zeros(m, dtype=torch.bool, device=kept.device)
    isolated[comp[degree == 1]] = True
    member_norms = _sum_rows(torch.linalg.vector_norm(spatial, dim=1, keepdim=True), comp, m)[:, 0]
    mean_norm = torch.linalg.vector_norm(kept, dim=1) * torch.bincount(comp, minlength=m)  # count_j * |k_j|
    rho = member_norms / torch.where(mean_norm > 0, mean_norm, torch.ones_like(mean_norm))
    bound = torch.where(mean_norm > 0, tau * rho, torch.zeros_like(rho))
    return isolated, float(bound.max()) + CANDIDATE_MARGIN / 10


def _symmetric_gram(x: torch.Tensor, blocks: _Blocks) -> torch.Tensor:
    """x [n, D] -> x x^T [n, n]. Only the upper triangle is multiplied (cache-sized row blocks, widths padded to
    COL_ALIGN, ~0.56 of the full product); each block is copied to its place and, transposed, to its mirror.
    Measured at n = 3,426, D = 896: 0.10 s against 0.19 s for one plain matmul (whose odd width also slows MKL)."""
    n = x.shape[0]
    xp = torch.zeros((n + COL_ALIGN - 1, x.shape[1]), dtype=x.dtype, device=x.device)
    xp[:n] = x
    gram = torch.empty((n, n), dtype=x.dtype, device=x.device)
    n_blocks = max(math.ceil(n * n / CACHE_BLOCK_ELEMENTS), TRIANGLE_BLOCKS if n >= 1024 else 1)
    step = math.ceil(n / n_blocks)
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        width = -(-(n - r0) // COL_ALIGN) * COL_ALIGN
        sim = _mm(xp[r0:r1], xp[r0 : r0 + width].T, out=blocks.get((r1 - r0, width)))[:, : n - r0]
        gram[r0:r1, r0:] = sim
        gram[r1:, r0:r1] = sim[:, r1 - r0 :].T
    return gram


def _gram_edges(gram: torch.Tensor, tau: float, in_sample: torch.Tensor | None, blocks: _Blocks):
    """Edges (u [E], v [E], u < v) of the threshold graph cos > tau, cosines taken from a Gram matrix of (unnormalised)
    sums [K, K] (left untouched; zero sums: cosine 0 with everything). Row blocks of CACHE_BLOCK_ELEMENTS
    cosines against the columns from their own first row on (the upper triangle), in reused buffers, so no
    K x K scratch; each cosine is G_ij / d_i / d_j, the same float operations as on the whole matrix. Sampled
    regime (in_sample [1, K]): an edge counts when either end is sampled, as in ``_rows_graph``."""
    n = gram.shape[0]
    if tau >= 1:
        return gram.new_empty(0, dtype=torch.long), gram.new_empty(0, dtype=torch.long)
    d = gram.diagonal().clamp_min(0).sqrt()
    d = torch.where(d > 0, d, torch.ones_like(d))
    step = max(1, CACHE_BLOCK_ELEMENTS // n)
    us, vs = [], []
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        shape = (r1 - r0, n - r0)
        cos = torch.div(gram[r0:r1, r0:], d[r0:r1, None], out=blocks.get(shape)).div_(d[None, r0:])
        u, v = _sampled_edges(*_triangle_edges(blocks.above(cos, tau), r0), in_sample)
        us.append(u)
        vs.append(v)
    return torch.cat(us), torch.cat(vs)


# --------------------------------------------------------------------------------------------------- steps


class _Video:
    """One video's float32 tokens and per-frame similarities; runs the three steps at any tau."""

    def __init__(self, tokens: torch.Tensor, epsilon: float, keep_sims: bool):
        self.f, self.t, self.d = tokens.shape
        self.n = self.f * self.t
        self.device = tokens.device
        self.epsilon = epsilon
        self.x = tokens.reshape(self.n, self.d).float()  # [N, D]; a copy only when the input is not fp32
        norm = torch.linalg.vector_norm(self.x, dim=1, keepdim=True)  # [N, 1]
        # a NaN or inf anywhere makes its row's norm non-finite: one check over N values, not N*D
        if not bool(torch.isfinite(norm).all()):
            raise OptionError(
                "tokens contain NaN or inf (or values too large for float32 norms)",
                hint="check the vision encoder's output",
            )
        # 1 / norm, zero rows -> 1 (their dot products are 0, so cosine 0); similarities are dot products
        # rescaled by these, which saves a normalised [N, D] copy of the tokens
        self.inv_norm = 1 / torch.where(norm > 0, norm, torch.ones_like(norm)).squeeze(1)  # [N]
        # the spatial similarities never change with tau: kept for the budget search and the sweep
        self.blocks = _Blocks(self.device)
        self.sims = list(self._frame_sims(reuse=False)) if keep_sims else None
        self.spatial_sampled = sample_size(self.t, epsilon) < self.t

    def _frame_sims(self, reuse: bool = True):
        """Yield (f0, [c, T, T] cosine) for chunks of frames, at most BLOCK_ELEMENTS entries each."""
        x3 = self.x.view(self.f, self.t, self.d)
        inv = self.inv_norm.view(self.f, self.t)
        step = max(1, BLOCK_ELEMENTS // (self.t * self.t))
        for f0 in range(0, self.f, step):
            c = x3[f0 : f0 + step]
            s = inv[f0 : f0 + step]
            out = self.blocks.get((c.shape[0], self.t, self.t)) if reuse else None
            yield f0, _mm(c, c.transpose(1, 2), out=out).mul_(s[:, :, None]).mul_(s[:, None, :])

    def spatial(self, tau: float, generator: torch.Generator):
        """-> (comp [N] in output order, rep [M1]); draws the per-frame samples first when sampled."""
        in_sample = _sample_mask(self.t, self.epsilon, generator, self.f, self.device)
        sims = self.sims if self.sims is not None else self._frame_sims()
        labels, degree = _spatial_graph(sims, self.f, self.t, tau, in_sample, self.device, self.blocks)
        return _order(labels, degree)

    def temporal(self, spatial_tokens: torch.Tensor, tau: float, generator: torch.Generator):
        """[M1, D] -> (comp [M1] in output order, rep [M], degree [M1] in the temporal graph)."""
        m1 = spatial_tokens.shape[0]
        in_sample = _sample_mask(m1, self.epsilon, generator, 1, self.device)
        labels, degree = _rows_graph(spatial_tokens, tau, in_sample, self.blocks)
        return *_order(labels, degree), degree

    def merge(self, kept: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
        """kept [M, D], assignment [N] -> merged [M, D]: (kept_j + sum of its originals) / (count_j + 1)."""
        m = kept.shape[0]
        sums = _sum_rows(self.x, assignment, m, out=kept.clone())
        counts = torch.bincount(assignment, minlength=m).to(kept.dtype)
        return sums.div_((counts + 1)[:, None])

    def _assign_dense(self, unit: torch.Tensor, m: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Argmax over all M kept tokens for every original (or those in ``rows``), in row blocks of
        CACHE_BLOCK_ELEMENTS scores (a block of ``rows`` is gathered at a time, never all of them)."""
        unit_t = unit[: m + (-m % COL_ALIGN)].T  # [D, M_pad]
        m_pad = unit_t.shape[1]
        step = max(1, CACHE_BLOCK_ELEMENTS // m_pad)
        chunks = self.x.split(step) if rows is None else (self.x.index_select(0, r) for r in rows.split(step))
        return torch.cat([_argmax_rows(_mm(a, unit_t, out=self.blocks.get((len(a), m_pad)))[:, :m]) for a in chunks])

    def _assign_by_candidates(
        self, unit: torch.Tensor, m: int, anchor: torch.Tensor, isolated: torch.Tensor, rival_bound: float
    ) -> torch.Tensor:
        """The merge's argmax without scoring every original against every kept token (exact, see below).

        On the sphere, angle(x, k) >= angle(k0, k) - angle(x, k0). So a kept token k can score at least as high as
        the anchor k0 for a row x only if angle(k0, k) <= 2 angle(x, k0), i.e. cos(k0, k) >= 2 cos^2(x, k0) - 1.
        One threshold per anchor (from its worst row, minus CANDIDATE_MARGIN for float32 rounding) and the kept
        tokens' Gram matrix (upper triangle, row blocks: ~0.56 M^2 D) give each anchor its candidate set; rows
        whose anchor has no rival are done, the rest are scored against their anchor's candidates only (one small
        matmul per anchor, candidates ascending so ties still go to the lowest index), or against all M when that
        is cheaper. Cost: the Gram matrix plus O(N D), instead of N M D; how many rows it settles depends on how far
        apart the kept tokens are (video-like tokens at tau 0.9: all but ~1 % of the N M scores are skipped).
        Anchors in ``isolated`` whose threshold is above ``rival_bound`` have no candidate but themselves without
        any Gram row: only the other anchors' rows are computed when they are few.
        """
        n, d = self.n, self.d
        device = self.device
        # cosine of every original with its anchor, in cache-sized row blocks
        cos0 = torch.empty(n, device=device)
        step = max(1, CACHE_BLOCK_ELEMENTS // d)
        for r0 in range(0, n, step):
            r1 = min(r0 + step, n)
            k = torch.index_select(unit, 0, anchor[r0:r1], out=self.blocks.get((r1 - r0, d)))
            torch.sum(k.mul_(self.x[r0:r1]), dim=1, out=cos0[r0:r1])
        cos0.mul_(self.inv_norm)  # zero rows: 0
        worst = torch.full((m,), 2.0, device=device).scatter_reduce_(0, anchor, cos0, reduce="amin")
        # worst <= 0: the anchor's cone reaches past 90 degrees, every kept token is a candidate
        limit = torch.where(worst > 0, 2 * worst * worst - 1 - CANDIDATE_MARGIN, torch.full_like(worst, -3.0))

        settled = isolated & (limit > rival_bound)
        owners, rivals = self._rivals(unit, m, limit, (~settled).nonzero().squeeze(1))
        n_cand = torch.bincount(owners, minlength=m) + 1  # + the anchor itself
        open_rows = (n_cand.index_select(0, anchor) > 1).nonzero().squeeze(1)
        assignment = anchor.clone()
        if open_rows.numel() == 0:
            return assignment
        open_anchors = (n_cand > 1).nonzero().squeeze(1)
        rows_per = torch.bincount(anchor.index_select(0, open_rows), minlength=m).index_select(0, open_anchors)
        cand_per = n_cand.index_select(0, open_anchors)
        pair_work = int((rows_per * cand_per).sum())
        dense_work = open_rows.numel() * m * d
        if open_anchors.numel() * GROUP_OVERHEAD + SMALL_MM_PENALTY * pair_work * d >= dense_work:
            assignment[open_rows] = self._assign_dense(unit, m, open_rows)
            return assignment

        # candidates per open anchor, ascending (the anchor included), and its rows, both grouped by anchor
        owners = torch.cat([owners, open_anchors])
        key, _ = (owners * m + torch.cat([rivals, open_anchors])).sort()
        cands = key % m
        rows = open_rows.index_select(0, anchor.index_select(0, open_rows).argsort(stable=True))
        c_end = cand_per.cumsum(0).tolist()
        r_end = rows_per.cumsum(0).tolist()
        best = []
        c0 = r0 = 0
        for c1, r1 in zip(c_end, r_end, strict=True):
            c, r = cands[c0:c1], rows[r0:r1]
            scores = torch.mm(self.x.index_select(0, r), unit.index_select(0, c).T)  # [rows, candidates]
            best.append(c.index_select(0, _argmax_rows(scores)))
            c0, r0 = c1, r1
        return assignment.index_copy_(0, rows, torch.cat(best))

    def _rivals(self, unit: torch.Tensor, m: int, limit: torch.Tensor, asking: torch.Tensor):
        """Pairs (owner, rival) of kept tokens with cos(owner, rival) > limit[owner], owner != rival, for the
        owners in ``asking`` (others may show up too: more candidates never change the answer). Few askers: their
        rows of the Gram matrix; else the whole matrix in upper-triangle row blocks (each pair computed once and
        checked against both ends, ~0.56 M^2 D)."""
        owners, rivals = [asking[:0]], [asking[:0]]
        if asking.numel() < RIVAL_ROWS_MAX * m:
            step = max(1, CACHE_BLOCK_ELEMENTS // (m + COL_ALIGN))
            width = m + (-m % COL_ALIGN)
            for ask in asking.split(step):
                a = unit.index_select(0, ask)
                sim = _mm(a, unit[:width].T, out=self.blocks.get((a.shape[0], width)))[:, :m]
                flag = torch.gt(sim, limit.index_select(0, ask)[:, None], out=self.blocks.get(sim.shape, torch.bool))
                i, j = flag.nonzero().unbind(1)
                i = ask.index_select(0, i)
                other = i != j
                owners.append(i[other])
                rivals.append(j[other])
            return torch.cat(owners), torch.cat(rivals)
        n_blocks = max(math.ceil(m * m / CACHE_BLOCK_ELEMENTS), TRIANGLE_BLOCKS if m >= 1024 else 1)
        step = math.ceil(m / n_blocks)
        for r0 in range(0, m, step):
            a = unit[r0 : min(r0 + step, m)]
            b = a.shape[0]
            width = -(-(m - r0) // COL_ALIGN) * COL_ALIGN
            sim = _mm(a, unit[r0 : r0 + width].T, out=self.blocks.get((b, width)))[:, : m - r0]
            flag = self.blocks.get((b, m - r0), torch.bool)
            for lim, by_row in ((limit[r0 : r0 + b, None], True), (limit[None, r0:m], False)):
                i, j = torch.gt(sim, lim, out=flag).nonzero().unbind(1)
                upper = j > i  # strictly above the diagonal: each unordered pair once per direction
                i, j = i[upper] + r0, j[upper] + r0
                owners.append(i if by_row else j)
                rivals.append(j if by_row else i)
        return torch.cat(owners), torch.cat(rivals)

    def run(self, tau: float, tau_temporal: float, generator: torch.Generator):
        comp1, rep1 = self.spatial(tau, generator)
        m1 = rep1.numel()
        spatial_tokens = _means(self.x, comp1, m1)  # [M1, D]
        comp2, rep2, degree = self.temporal(spatial_tokens, tau_temporal, generator)
        m = rep2.numel()
        kept = _means(spatial_tokens, comp2, m)  # [M, D]
        # argmax_j cos(x_i, k_j) = argmax_j x_i . k_j / |k_j| (|x_i| is the same for the whole row; a zero row
        # scores 0 everywhere, as its cosines do, and goes to index 0 like any all-tie row)
        unit = _unit(kept, COL_ALIGN - 1)  # [M + 7, D], zero rows past M (aligned slices, ignored columns)
        if self.device.type == "cpu" and m >= CANDIDATE_MIN_KEPT:
            anchor = comp2.index_select(0, comp1)  # the kept token each original's own components led to
            isolated, bound = _isolated_kept(spatial_tokens, comp2, degree, kept, tau_temporal)
            assignment = self._assign_by_candidates(unit, m, anchor, isolated, bound)
        else:
            assignment = self._assign_dense(unit, m)
        merged = self.merge(kept, assignment)
        per_frame = torch.bincount(rep1 // self.t, minlength=self.f).tolist()
        return merged, assignment, m1, per_frame


# ------------------------------------------------------------------------------------------ budget search


class _Counter:
    """Output counts M(tau) for the budget search and the sweep, reusing the per-frame similarities and,
    where components nest, one Gram matrix of spatial component sums (see the module docstring)."""

    def __init__(self, video: _Video, generator: torch.Generator, tau_temporal: float | None):
        self.video = video
        self.state = generator  # never consumed: every evaluation draws from a clone
        self.tau_temporal = tau_temporal
        # (tau, rep [K_b] a member of each base component, gram [K_b, K_b] of the component sums); only where
        # spatial components nest (exact spatial regime)
        self.base = None
        self.last = None  # the latest aggregated (tau, rep, gram): the next base if that tau becomes the bracket top
        self.n_direct = 0
        self.scratch: list[torch.Tensor] = []  # reused workspaces: fresh multi-MB buffers cost page faults

    def _buffer(self, i: int, n: int) -> torch.Tensor:
        while len(self.scratch) <= i:
            self.scratch.append(torch.empty(0, device=self.video.device))
        if self.scratch[i].numel() < n:
            self.scratch[i] = torch.empty(n, device=self.video.device)
        return self.scratch[i][:n]

    def _spatial(self, tau: float):
        g = _clone(self.state)
        comp, rep = self.video.spatial(tau, g)
        return g, comp, rep

    def spatial_count(self, tau: float) -> int:
        """M1 at tau: the spatial step alone (the per-frame similarities are kept, so no matmul)."""
        return self._spatial(tau)[2].numel()

    def count_one_per_frame(self) -> tuple[int, int]:
        """(M1, M) at any spatial tau below -1, where every pair in a frame is adjacent: one spatial token per
        frame (in frame order), then the temporal step at the fixed tau_temporal. The same draws and arithmetic
        as ``count`` at such a tau, without building the F T^2 edges."""
        video = self.video
        g = _clone(self.state)
        _sample_mask(video.t, video.epsilon, g, video.f, video.device)  # the spatial step's draws, if any
        comp = torch.arange(video.f, device=video.device).repeat_interleave(video.t)
        return video.f, _n_roots(self._direct_labels(comp, video.f, g, self.tau_temporal))

    def _direct_labels(self, comp: torch.Tensor, m1: int, g: torch.Generator, tau: float) -> torch.Tensor:
        """Temporal component labels [M1] of the spatial output ``comp`` (N -> 0..M1-1): the members' means, the
        temporal step's draw from ``g``, one blockwise pass, as the temporal step itself does it."""
        means = _means(self.video.x, comp, m1)
        in_sample = _sample_mask(m1, self.video.epsilon, g, 1, self.video.device)
        return _rows_graph(means, tau, in_sample, self.video.blocks)[0]

    def can_aggregate(self, tau: float) -> bool:
        return self.base is not None and tau <= self.base[0]

    def rebase(self, tau: float) -> None:
        """The last aggregated count (at tau) became the top of the bracket: later candidates are all below it,
        so its smaller Gram matrix serves them."""
        if self.last is not None and self.last[0] == tau:
            self.base = self.last
            # the new base lives in workspace 1; the old base's storage (slot 3) becomes the next workspace 1
            self._buffer(3, 0)
            self.scratch[1], self.scratch[3] = self.scratch[3], self.scratch[1]

    def count(self, tau: float) -> tuple[int, int]:
        """-> (M1, M) at spatial tau (temporal tau: the fixed one, else the same)."""
        tt = tau if self.tau_temporal is None else self.tau_temporal
        n = self.video.n
        if tau >= 1 and tt >= 1:
            return n, n
        g, comp, rep = self._spatial(tau)
        m1 = rep.numel()
        self.last = None
        fresh = not self.can_aggregate(tau) and not self.video.spatial_sampled and m1 <= DENSE_LIMIT
        if fresh:
            # a matmul is due anyway: keep its Gram matrix as the base for every lower tau
            sums = _sum_rows(self.video.x, comp, m1)
            self.base = (tau, rep, _symmetric_gram(sums, self.video.blocks))  # [M1, M1]
            self.n_direct += 1
        if self.can_aggregate(tau):
            _, base_rep, gram = self.base
            in_sample = _sample_mask(m1, self.video.epsilon, g, 1, self.video.device)
            with _all_threads():  # passes over M1 x K_b entries: big enough for every thread
                if fresh:  # the base's own components: nothing to sum
                    agg = gram
                else:
                    k_b = gram.shape[0]
                    to_comp = comp.index_select(0, base_rep)  # [K_b]: base components nest inside the coarser ones
                    agg = self._buffer(1, m1 * m1).view(m1, m1).zero_()
                    # [M1, M1] = P G P^T, a cache-sized block of G's rows at a time: its columns summed into the
                    # coarse components (G P^T rows), then those rows added into their own components' rows
                    step = max(1, CACHE_BLOCK_ELEMENTS // m1)
                    for i0 in range(0, k_b, step):
                        i1 = min(i0 + step, k_b)
                        part = self._buffer(0, (i1 - i0) * m1).view(i1 - i0, m1).zero_()
                        part.scatter_add_(1, to_comp[None, :].expand(i1 - i0, -1), gram[i0:i1])
                        agg.index_add_(0, to_comp[i0:i1], part)
                    self.last = (tau, rep, agg)
                edges = _gram_edges(agg, tt, in_sample, self.video.blocks)
            labels = torch.arange(m1, device=agg.device)
            _union(labels, *edges)
        else:
            self.n_direct += 1
            labels = self._direct_labels(comp, m1, g, tt)
        return m1, _n_roots(labels)


def _n_roots(labels: torch.Tensor) -> int:
    """Components in a flat forest: the entries that are their own root."""
    return int((labels == torch.arange(labels.numel(), device=labels.device)).sum())


K_GUESS = 3.0  # M grows like M1^k near the answer; k before two measured counts pin it down. Measured on the bench's
# video-like tokens at 10 %: k = 2.7 (32 frames), 3.0 (64), 3.2-3.6 (256)
PROXY_STEPS = 8  # at most this many spatial-only counts per candidate (Illinois regula falsi on log M1)
PROXY_TOL = 0.005  # ... stopping once M1 is within 0.5 % of the wanted count (M then within ~1.5 %)


def _search_tau(counter: _Counter, budget: int, tau0: float) -> float:
    """Highest tau found with M <= budget, stopping early once M >= 0.9 * budget (see module docstring)."""
    n = counter.video.n
    if budget >= n:
        return 1.0
    floor = math.ceil(0.9 * budget)
    lo = (-1.5, 1, None)  # (tau, M, M1); below -1 every pair is adjacent: one token; its M1 was never measured
    hi = (1.0, n, n)  # at 1 nothing merges
    if counter.tau_temporal is not None:
        # a fixed temporal tau may not merge the frames: the fewest tokens any spatial tau reaches is at lo
        m1, m = counter.count_one_per_frame()
        if m > budget:
            raise OptionError(
                f"a budget of {budget} tokens is out of reach with tau_temporal={counter.tau_temporal:g}: even one "
                f"token per frame leaves {m} after the temporal step",
                hint="lower tau_temporal, leave it unset (one tau is then searched for both steps) or raise the budget",
            )
        lo = (-1.5, m, m1)
    cand = min(max(tau0, -1.0), 0.999)
    moved = ""  # which end each evaluation replaced, "l" or "h"
    recent: list[tuple] = []  # the last two counted candidates
    for _ in range(MAX_SEARCH_EVALS):
        if not counter.can_aggregate(cand) and counter.n_direct >= MAX_DIRECT_EVALS:
            break
        m1, m = counter.count(cand)
        recent = [*recent[-1:], (cand, m, m1)]
        if m <= budget:
            lo = (cand, m, m1)
            if m >= floor:
                break
            moved += "l"
        else:
            hi = (cand, m, m1)
            counter.rebase(cand)
            moved += "h"
        if hi[0] - lo[0] < 1e-7:
            break
        # two moves of the same end with both ends measured: the model is off, bisect (in s, below) instead
        stalled = lo[2] is not None and moved[-2:] in ("ll", "hh")
        cand = _next_candidate(counter, lo, hi, 0.95 * budget, stalled, recent)
        if not lo[0] < cand < hi[0]:
            break
    return lo[0]


def _exponent(p: tuple, q: tuple) -> float | None:
    """k in M ~ M1^k through two counted points (tau, M, M1), if they pin it down."""
    if p[2] is None or q[2] is None or p[2] == q[2] or p[1] == q[1]:
        return None
    k = math.log(p[1] / q[1]) / math.log(p[2] / q[2])
    return min(k, 10.0) if k > 0 else None


def _next_candidate(
    counter: _Counter, lo: tuple, hi: tuple, target: float, stalled: bool, recent: list[tuple]
) -> float:
    """The next tau to count, aiming at M = target inside the bracket (lo, hi), each end (tau, M, M1).

    Coordinates: s = log(1.001 - tau), in which counts change about evenly (they change fastest near tau = 1);
    the candidate stays within the middle 98 % of the bracket in s. Guess: the temporal count follows the
    spatial one as M ~ M1^k (k through the two ends when both were counted, else through the last two counted
    candidates, else K_GUESS), so the wanted spatial count is M1_hi * (target / M_hi)^(1/k), and tau comes from
    a few spatial-only counts (cheap: the per-frame similarities are kept; Illinois regula falsi on log M1
    against s). Where M1 does not separate the ends (T = 1, say) it falls back to regula falsi on log M against
    s; ``stalled`` bisects in s.
    """
    s_lo, s_hi = math.log(1.001 - lo[0]), math.log(1.001 - hi[0])

    def tau_at(frac: float) -> float:
        return 1.001 - math.exp(s_lo + (s_hi - s_lo) * frac)

    def at(frac: float) -> float:
        return tau_at(min(max(frac, 0.01), 0.99))

    if stalled:
        return at(0.5)
    (_, m_lo, m1_lo), (_, m_hi, m1_hi) = lo, hi
    m1_low = m1_lo if m1_lo is not None else counter.video.f  # below tau -1 each frame is one token
    if m1_low >= m1_hi:
        frac = (math.log(target) - math.log(m_lo)) / max(math.log(m_hi) - math.log(m_lo), 1e-12)
        return at(frac)
    k = _exponent(lo, hi) or (_exponent(*recent) if len(recent) == 2 else None) or K_GUESS
    log_wanted = math.log(m1_hi) + math.log(target / m_hi) / k
    # Illinois regula falsi for log M1(frac) = log_wanted, frac in (0, 1)
    a, fa = 0.0, math.log(m1_low) - log_wanted
    b, fb = 1.0, math.log(m1_hi) - log_wanted
    if fa >= 0 or fb <= 0:
        return at(0.0 if fa >= 0 else 1.0)
    c, side = 0.5, 0
    for _ in range(PROXY_STEPS):
        c = (a * fb - b * fa) / (fb - fa)
        fc = math.log(counter.spatial_count(tau_at(c))) - log_wanted
        if abs(fc) < PROXY_TOL:
            break
        if fc < 0:
            a, fa = c, fc
            if side < 0:
                fb /= 2
            side = -1
        else:
            b, fb = c, fc
            if side > 0:
                fa /= 2
            side = 1
    return at(c)


# ------------------------------------------------------------------------------------------------- public


def _default_generator(generator: object) -> torch.Generator:
    if generator is None:
        return torch.Generator(device="cpu").manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise OptionError(
            f"generator must be a torch.Generator, got {type(generator).__name__}",
            hint="torch.Generator().manual_seed(seed), or None for seed 0",
        )
    return generator


def compress(
    tokens: torch.Tensor,
    tau: float = 0.9,
    epsilon: float = 0.05,
    tau_temporal: float | None = None,
    budget: float | int | None = None,
    generator: torch.Generator | None = None,
) -> CompressionResult:
    """Compress one video's tokens [F, T, D] -> CompressionResult with kept tokens [M, D].

    tau: cosine threshold (strict >) for both steps; any finite value, >= 1 keeps every token.
    epsilon: sampled-components tolerance in (0, 1]; sampling starts where ceil(ln N / eps^2) < N.
    tau_temporal: threshold for the temporal step; None: same as tau.
    budget: None; a float in (0, 1] (keep at most floor(ratio * F*T) tokens, at least 1); or an int >= 1
        (keep at most that many). tau is then searched per video so that M <= budget and, whenever some tau
        allows it, M >= 0.9 * budget (in the sampled regime only M <= budget is guaranteed); ``tau`` seeds the
        search; a budget of at least F*T keeps every token (tau 1.0). Without ``tau_temporal`` one tau is
        searched for both steps; with it the temporal tau stays fixed and only the spatial tau is searched.
    generator: draws the sampled regime's vertices (on the generator's device); None: CPU, seed 0. The same
        input and generator state give bit-identical output. Budget mode evaluates candidates on clones of
        the generator and consumes it only in the final compression.

    Raises OptionError for invalid arguments.
    """
    _check_tokens(tokens)
    tau = _check_tau("tau", tau)
    tau_t = None if tau_temporal is None else _check_tau("tau_temporal", tau_temporal)
    epsilon = _check_epsilon(epsilon)
    f, t, _ = tokens.shape
    n_budget = _resolve_budget(budget, f * t)
    generator = _default_generator(generator)

    with torch.no_grad(), _serial_bookkeeping(tokens.device):
        video = _Video(tokens, epsilon, keep_sims=n_budget is not None)
        if n_budget is not None:
            counter = _Counter(video, generator, tau_t)
            tau = _search_tau(counter, n_budget, tau)
            del counter
        used_t = tau if tau_t is None else tau_t
        merged, assignment, m1, per_frame = video.run(tau, used_t, generator)
    return CompressionResult(
        tokens=merged.to(tokens.dtype),
        n_input=f * t,
        n_spatial=m1,
        n_output=merged.shape[0],
        tau=tau,
        tau_temporal=used_t,
        epsilon=epsilon,
        budget=n_budget,
        spatial_per_frame=per_frame,
        assignment=assignment,
    )


def retention_sweep(
    tokens: torch.Tensor,
    taus,
    epsilon: float = 0.05,
    generator: torch.Generator | None = None,
    tau_temporal: float | None = None,
) -> list[tuple[float, int, int]]:
    """(tau, n_spatial, n_output) for each tau (in the given order), each as ``compress(tokens, tau, epsilon,
    generator=<a copy of generator>, tau_temporal=tau_temporal)`` would count it (``tau_temporal`` None: the
    temporal step uses each tau too). The per-frame similarities are computed once; where
    components nest, the temporal similarities of every lower tau come from one Gram matrix at the highest
    tau whose spatial output fits DENSE_LIMIT."""
    _check_tokens(tokens)
    try:
        taus = [_check_tau("tau", x) for x in taus]
    except TypeError as e:
        raise OptionError(f"taus must be a list of numbers, got {taus!r}", hint="e.g. [0.95, 0.9, 0.85, 0.8]") from e
    epsilon = _check_epsilon(epsilon)
    if tau_temporal is not None:
        tau_temporal = _check_tau("tau_temporal", tau_temporal)
    generator = _default_generator(generator)
    out: dict[float, tuple[int, int]] = {}
    with torch.no_grad(), _serial_bookkeeping(tokens.device):
        counter = _Counter(_Video(tokens, epsilon, keep_sims=True), generator, tau_temporal)
        for tau in sorted(set(taus), reverse=True):
            out[tau] = counter.count(tau)
    return [(tau, *out[tau]) for tau in taus]
