"""The token budget: find the highest tau whose compression keeps at most B tokens, aiming at [0.9 B, B].

* ``OutputCounter``: the output count M(tau) without a full compression. The per-frame similarities are kept (no
  matmul per spatial count); where spatial components nest (exact spatial regime, M1 <= DENSE_LIMIT), the Gram
  matrix of the spatial component sums is computed once (O(M1^2 D)) and every lower tau's temporal cosines are that
  matrix summed over the coarser components (O(M1^2), no D). Otherwise each count is a blockwise temporal pass.
* ``fit_budget``: the search (bracket [feasible tau, too-high tau], candidates from the spatial counts) and the
  final compression, which is checked: a Gram-aggregated count can differ from the final run's by a token where a
  cosine sits within float32 rounding of the threshold, so if the final run keeps more than B its tau becomes the
  bracket's top and the search goes on with exact counts. The result never exceeds B.

docs/scc.md explains the nesting argument, the candidate rule and what is (and is not) guaranteed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from scissor_cli.errors import OptionError
from scissor_cli.scc import kernels
from scissor_cli.scc.graph import (
    Tokens,
    means,
    n_roots,
    rows_graph,
    sampled_edges,
    spatial_components,
    sum_rows,
    triangle_edges,
    union,
)
from scissor_cli.scc.kernels import Blocks, all_threads
from scissor_cli.scc.sampling import clone, sample_mask

DENSE_LIMIT = 8192  # the search keeps an M1 x M1 Gram matrix only up to this many spatial tokens
MAX_SEARCH_EVALS = 48  # candidate counts per search round
MAX_DIRECT_EVALS = 10  # counts that need a fresh temporal matmul each, over the whole search
K_GUESS = 3.0  # M grows like M1^k near the answer; k before two counts pin it down (video-like tokens at 10 %: 2.7-3.6)
PROXY_STEPS = 8  # at most this many spatial-only counts per candidate (Illinois regula falsi on log M1)
PROXY_TOL = 0.005  # ... stopping once M1 is within 0.5 % of the wanted count (M then within ~1.5 %)
LOWEST = -1.5  # a spatial tau below -1: every pair in a frame is adjacent, one token per frame


class OutputCounter:
    """Counts (M1, M) at any spatial tau; the temporal tau is the fixed one, else the same tau. ``exact``: every
    count is a blockwise temporal pass, the final run's own arithmetic (no Gram aggregation)."""

    def __init__(self, video: Tokens, generator: torch.Generator, tau_temporal: float | None, exact: bool = False):
        self.video = video
        self.state = generator  # never consumed: every count draws from a clone
        self.tau_temporal = tau_temporal
        self.exact = exact
        # (tau, rep [K_b] a member of each base component, gram [K_b, K_b] of the component sums)
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
        g = clone(self.state)
        comp, rep = spatial_components(self.video, tau, g)
        return g, comp, rep

    def spatial_count(self, tau: float) -> int:
        """M1 at tau: the spatial step alone (no matmul: the per-frame similarities are kept)."""
        return self._spatial(tau)[2].numel()

    def count_one_per_frame(self) -> tuple[int, int]:
        """(M1, M) at LOWEST: one spatial token per frame (in frame order), then the temporal step at the fixed
        tau_temporal; the draws and arithmetic of a compression at that tau, without the F T^2 edges."""
        video = self.video
        g = clone(self.state)
        sample_mask(video.t, video.epsilon, g, video.f, video.device)  # the spatial step's draws, if any
        comp = torch.arange(video.f, device=video.device).repeat_interleave(video.t)
        return video.f, n_roots(self._direct_labels(comp, video.f, g, self.tau_temporal))

    def _direct_labels(self, comp: torch.Tensor, m1: int, g: torch.Generator, tau: float) -> torch.Tensor:
        """Temporal labels [M1] of the spatial output ``comp``: as the temporal step computes them."""
        spatial = means(self.video.x, comp, m1)
        in_sample = sample_mask(m1, self.video.epsilon, g, 1, self.video.device)
        return rows_graph(spatial, tau, in_sample, self.video.blocks)[0]

    def can_aggregate(self, tau: float) -> bool:
        return not self.exact and self.base is not None and tau <= self.base[0]

    def rebase(self, tau: float) -> None:
        """The last aggregated count (at tau) became the top of the bracket: its smaller Gram matrix serves every
        later candidate."""
        if self.last is not None and self.last[0] == tau:
            self.base = self.last
            # the new base lives in workspace 1; the old base's storage (slot 3) becomes the next workspace 1
            self._buffer(3, 0)
            self.scratch[1], self.scratch[3] = self.scratch[3], self.scratch[1]

    def count(self, tau: float) -> tuple[int, int]:
        """-> (M1, M) at spatial tau."""
        tt = tau if self.tau_temporal is None else self.tau_temporal
        n = self.video.n
        if tau >= 1 and tt >= 1:
            return n, n
        g, comp, rep = self._spatial(tau)
        m1 = rep.numel()
        self.last = None
        fresh = not self.exact and not self.can_aggregate(tau) and not self.video.spatial_sampled and m1 <= DENSE_LIMIT
        if fresh:
            # a matmul is due anyway: keep its Gram matrix as the base for every lower tau
            sums = sum_rows(self.video.x, comp, m1)
            self.base = (tau, rep, symmetric_gram(sums, self.video.blocks))  # [M1, M1]
            self.n_direct += 1
        if not self.can_aggregate(tau):
            self.n_direct += 1
            return m1, n_roots(self._direct_labels(comp, m1, g, tt))
        _, base_rep, gram = self.base
        in_sample = sample_mask(m1, self.video.epsilon, g, 1, self.video.device)
        with all_threads():  # passes over M1 x K_b entries: big enough for every thread
            if fresh:  # the base's own components: nothing to sum
                agg = gram
            else:
                agg = self._aggregate(gram, comp.index_select(0, base_rep), m1)
                self.last = (tau, rep, agg)
            edges = gram_edges(agg, tt, in_sample, self.video.blocks)
        labels = torch.arange(m1, device=agg.device)
        union(labels, *edges)
        return m1, n_roots(labels)

    def _aggregate(self, gram: torch.Tensor, to_comp: torch.Tensor, m1: int) -> torch.Tensor:
        """gram [K_b, K_b] of the base's component sums -> [M1, M1] = P G P^T, P summing base components into the
        coarser ones (to_comp [K_b]); a cache-sized block of G's rows at a time: its columns summed into the coarse
        components, then those rows added into their own components' rows."""
        k_b = gram.shape[0]
        agg = self._buffer(1, m1 * m1).view(m1, m1).zero_()
        step = max(1, kernels.CACHE_BLOCK_ELEMENTS // m1)
        for i0 in range(0, k_b, step):
            i1 = min(i0 + step, k_b)
            part = self._buffer(0, (i1 - i0) * m1).view(i1 - i0, m1).zero_()
            part.scatter_add_(1, to_comp[None, :].expand(i1 - i0, -1), gram[i0:i1])
            agg.index_add_(0, to_comp[i0:i1], part)
        return agg


def symmetric_gram(x: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """x [n, D] -> x x^T [n, n], multiplying the upper triangle only (~0.56 n^2 D); each block is copied to its
    place and, transposed, to its mirror."""
    n = x.shape[0]
    xp = torch.zeros((n + kernels.COL_ALIGN - 1, x.shape[1]), dtype=x.dtype, device=x.device)
    xp[:n] = x
    gram = torch.empty((n, n), dtype=x.dtype, device=x.device)
    for r0, r1, width in kernels.triangle_blocks(n):
        sim = kernels.mm(xp[r0:r1], xp[r0 : r0 + width].T, out=blocks.get((r1 - r0, width)))[:, : n - r0]
        gram[r0:r1, r0:] = sim
        gram[r1:, r0:r1] = sim[:, r1 - r0 :].T
    return gram


def gram_edges(gram: torch.Tensor, tau: float, in_sample: torch.Tensor | None, blocks: Blocks):
    """Edges (u [E], v [E], u < v) of cos > tau, the cosines G_ij / d_i / d_j of a Gram matrix of (unnormalised)
    sums [K, K] (left untouched; zero sums: cosine 0). Row blocks of CACHE_BLOCK_ELEMENTS cosines against the
    columns from their own first row on; sampled regime (in_sample [1, K]) as in ``rows_graph``."""
    n = gram.shape[0]
    if tau >= 1:
        return gram.new_empty(0, dtype=torch.long), gram.new_empty(0, dtype=torch.long)
    d = gram.diagonal().clamp_min(0).sqrt()
    d = torch.where(d > 0, d, torch.ones_like(d))
    step = max(1, kernels.CACHE_BLOCK_ELEMENTS // n)
    us, vs = [], []
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        cos = torch.div(gram[r0:r1, r0:], d[r0:r1, None], out=blocks.get((r1 - r0, n - r0))).div_(d[None, r0:])
        u, v = sampled_edges(*triangle_edges(blocks.above(cos, tau), r0), in_sample)
        us.append(u)
        vs.append(v)
    return torch.cat(us), torch.cat(vs)


def fit_budget(
    video: Tokens,
    budget: int,
    tau0: float,
    tau_temporal: float | None,
    generator: torch.Generator,
    compress_at: Callable[[float, torch.Generator], Any],
) -> tuple[float, Any]:
    """-> (tau, compress_at(tau, generator)) with the highest tau found whose compression keeps at most ``budget``
    tokens. ``compress_at(tau, g)`` runs the three steps and returns a tuple whose first entry is the kept tokens;
    the caller's generator ends as one such run leaves it."""
    counter = OutputCounter(video, generator, tau_temporal)
    search = _Search(counter, budget)
    search.run(min(max(tau0, -1.0), 0.999))
    while True:
        tau = search.lo[0]
        g = clone(generator)
        result = compress_at(tau, g)
        m, m1 = result.n_output, result.n_spatial
        if m <= budget:
            generator.set_state(g.get_state())
            return tau, result
        # the search's count at tau was off by rounding: tau is too high. Exact counts from here on; the lowest
        # end (LOWEST) was counted exactly, so this ends.
        counter.exact = True
        search.reject(tau, m, m1)
        search.run(search.next_candidate())


class _Search:
    """The bracket [lo, hi] over tau, each end (tau, M, M1): M(lo) <= budget < M(hi), M1 None where not counted."""

    def __init__(self, counter: OutputCounter, budget: int):
        self.counter = counter
        self.budget = budget
        self.floor = math.ceil(0.9 * budget)
        n = counter.video.n
        self.points: list[tuple] = []  # every counted (tau, M, M1) with M <= budget: the fallbacks
        self.lo: tuple = (LOWEST, 1, None)  # below -1 every pair is adjacent: one token
        self.hi: tuple = (1.0, n, n)  # at 1 nothing merges
        self.moved = ""  # which end each count replaced, "l" or "h"
        self.recent: list[tuple] = []  # the last two counted candidates
        if budget >= n:
            self.lo = (1.0, n, n)
        elif counter.tau_temporal is not None:
            # a fixed temporal tau may not merge the frames: the fewest tokens any spatial tau reaches is at LOWEST
            m1, m = counter.count_one_per_frame()
            if m > budget:
                raise OptionError(
                    f"a budget of {budget} tokens is out of reach with tau_temporal={counter.tau_temporal:g}: even "
                    f"one token per frame leaves {m} after the temporal step",
                    hint="lower tau_temporal, leave it unset (one tau is then searched for both steps) or raise the "
                    "budget",
                )
            self.lo = (LOWEST, m, m1)
        self.points.append(self.lo)

    def run(self, cand: float) -> None:
        """Count candidates from ``cand`` on until M lands in [0.9 B, B], the bracket closes or the counts run out."""
        if self.lo[0] >= 1:
            return
        counter = self.counter
        for _ in range(MAX_SEARCH_EVALS):
            if not self.lo[0] < cand < self.hi[0]:
                return
            if not counter.can_aggregate(cand) and counter.n_direct >= MAX_DIRECT_EVALS:
                return
            m1, m = counter.count(cand)
            self.recent = [*self.recent[-1:], (cand, m, m1)]
            if m <= self.budget:
                self.lo = (cand, m, m1)
                self.points.append(self.lo)
                if m >= self.floor:
                    return
                self.moved += "l"
            else:
                self.hi = (cand, m, m1)
                counter.rebase(cand)
                self.moved += "h"
            if self.hi[0] - self.lo[0] < 1e-7:
                return
            cand = self.next_candidate()

    def reject(self, tau: float, m: int, m1: int) -> None:
        """The final run at tau kept m > budget tokens: tau becomes the top, the best lower count the bottom."""
        self.hi = (tau, m, m1)
        self.points = [p for p in self.points if p[0] < tau]
        self.lo = max(self.points, key=lambda p: p[0])
        self.moved = ""
        self.recent = []

    def next_candidate(self) -> float:
        """The next tau to count, aiming at M = 0.95 B inside the bracket.

        Coordinates: s = log(1.001 - tau), in which counts change about evenly; the candidate stays within the middle
        98 % of the bracket in s. The temporal count follows the spatial one as M ~ M1^k (k through the bracket's
        counted ends, else the last two counts, else K_GUESS): the wanted spatial count is M1_hi (target /
        M_hi)^(1/k), and its tau comes from a few spatial-only counts (Illinois regula falsi on log M1 against s).
        Where M1 does not separate the ends (T = 1, say), regula falsi on log M; after two moves of one end running
        with both ends counted, a bisection in s.
        """
        lo, hi, counter = self.lo, self.hi, self.counter
        target = 0.95 * self.budget
        s_lo, s_hi = math.log(1.001 - lo[0]), math.log(1.001 - hi[0])

        def tau_at(frac: float) -> float:
            return 1.001 - math.exp(s_lo + (s_hi - s_lo) * frac)

        def at(frac: float) -> float:
            return tau_at(min(max(frac, 0.01), 0.99))

        if lo[2] is not None and self.moved[-2:] in ("ll", "hh"):
            return at(0.5)
        (_, m_lo, m1_lo), (_, m_hi, m1_hi) = lo, hi
        m1_low = m1_lo if m1_lo is not None else counter.video.f  # below tau -1 each frame is one token
        if m1_low >= m1_hi:
            frac = (math.log(target) - math.log(m_lo)) / max(math.log(m_hi) - math.log(m_lo), 1e-12)
            return at(frac)
        k = _exponent(lo, hi) or (_exponent(*self.recent) if len(self.recent) == 2 else None) or K_GUESS
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


def _exponent(p: tuple, q: tuple) -> float | None:
    """k in M ~ M1^k through two counted points (tau, M, M1), if they pin it down."""
    if p[2] is None or q[2] is None or p[2] == q[2] or p[1] == q[1]:
        return None
    k = math.log(p[1] / q[1]) / math.log(p[2] / q[2])
    return min(k, 10.0) if k > 0 else None
