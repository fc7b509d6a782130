"""Similarity graphs (cos > tau, strict, diagonal included) and their connected components, exact or sampled.

* ``Tokens``: one video's float32 tokens [N, D], their inverse norms and (when kept) the per-frame similarities.
* ``spatial_components``: every frame's graph from one batched matmul (O(F T^2 D)), all frames' edges unioned in
  one forest over the F*T global ids.
* ``temporal_components``: one graph over the spatial tokens [M1, D], built in upper-triangle row blocks
  (~0.56 M1^2 D, at most CACHE_BLOCK_ELEMENTS similarities alive), each block's edges unioned and dropped.
* ``union``: min-label union-find on tensors, O(E) per round, O(log N) rounds, one host sync per round.
* ``order``: components ranked by the index of their highest-degree member (ties: lowest index), O(N log N).

Sampled regime (``in_sample`` masks): only edges with a sampled end are unioned, so a vertex that is neither
sampled nor next to a sample stays a singleton.
"""

from __future__ import annotations

import math

import torch

from scissor_cli.errors import OptionError
from scissor_cli.scc import kernels
from scissor_cli.scc.kernels import Blocks
from scissor_cli.scc.sampling import sample_mask, sample_size


class Tokens:
    """One video's tokens as float32 [N, D] rows (N = F*T), inverse norms [N], optional per-frame similarities."""

    def __init__(self, tokens: torch.Tensor, epsilon: float, keep_sims: bool):
        self.f, self.t, self.d = tokens.shape
        self.n = self.f * self.t
        self.device = tokens.device
        self.epsilon = epsilon
        self.x = tokens.reshape(self.n, self.d).float()  # [N, D]; a copy only when the input is not float32
        norm = torch.linalg.vector_norm(self.x, dim=1, keepdim=True)  # [N, 1]
        # a NaN or inf anywhere makes its row's norm non-finite: one check over N values, not N*D
        if not bool(torch.isfinite(norm).all()):
            raise OptionError(
                "tokens contain NaN or inf (or values too large for float32 norms)",
                hint="check the vision encoder's output",
            )
        # zero rows -> 1: their dot products are 0, so cosine 0; cosines are dot products rescaled by these,
        # which saves a normalised [N, D] copy of the tokens
        self.inv_norm = 1 / torch.where(norm > 0, norm, torch.ones_like(norm)).squeeze(1)  # [N]
        self.blocks = Blocks(self.device)
        # the per-frame similarities do not depend on tau: kept for the budget search and the sweep
        self.sims = list(self.frame_sims(reuse=False)) if keep_sims else None
        self.spatial_sampled = sample_size(self.t, epsilon) < self.t

    def frame_sims(self, reuse: bool = True):
        """Yield (f0, [c, T, T] cosines) for chunks of c frames, at most BLOCK_ELEMENTS entries each."""
        x3 = self.x.view(self.f, self.t, self.d)
        inv = self.inv_norm.view(self.f, self.t)
        step = max(1, kernels.BLOCK_ELEMENTS // (self.t * self.t))
        for f0 in range(0, self.f, step):
            c = x3[f0 : f0 + step]
            s = inv[f0 : f0 + step]
            out = self.blocks.get((c.shape[0], self.t, self.t)) if reuse else None
            yield f0, kernels.mm(c, c.transpose(1, 2), out=out).mul_(s[:, :, None]).mul_(s[:, None, :])


def spatial_components(video: Tokens, tau: float, generator: torch.Generator):
    """SCC's components inside each frame -> (comp [N] component of each token, in output order; rep [M1]).
    Draws the per-frame samples first when T is in the sampled regime."""
    in_sample = sample_mask(video.t, video.epsilon, generator, video.f, video.device)
    t = video.t
    labels = torch.arange(video.n, device=video.device)
    degrees = []
    for f0, sim in video.sims if video.sims is not None else video.frame_sims():
        c = sim.shape[0]
        if tau >= 1:  # cos <= 1: nothing but the diagonal is adjacent
            degrees.append(torch.ones(c * t, dtype=torch.long, device=video.device))
            continue
        mask = None if in_sample is None else in_sample[f0 : f0 + c]
        u, v, deg = _frame_edges(video.blocks.above(sim, tau), f0 * t, mask)
        degrees.append(deg)
        union(labels, u, v)
    return order(labels, torch.cat(degrees))


def temporal_components(video: Tokens, spatial: torch.Tensor, tau: float, generator: torch.Generator):
    """SCC's components over the whole video's spatial tokens [M1, D] -> (comp [M1] in output order, rep [M],
    degree [M1] in the temporal graph). Draws the temporal sample when M1 is in the sampled regime."""
    in_sample = sample_mask(spatial.shape[0], video.epsilon, generator, 1, video.device)
    labels, degree = rows_graph(spatial, tau, in_sample, video.blocks)
    return *order(labels, degree), degree


def _frame_edges(adj: torch.Tensor, offset: int, in_sample: torch.Tensor | None):
    """adj [C, T, T] bool, the graphs of C frames -> (u [E], v [E], degree [C*T]) with global ids
    offset + c*T + local id. Exact regime: each edge once (u < v). Sampled (in_sample [C, T]): every edge of a
    sampled row. Degrees count the diagonal once. One pass over the block (nonzero), then O(edges)."""
    c, t, _ = adj.shape
    graph, row, col = adj.nonzero().unbind(1)  # both directions, diagonal included
    off = row != col
    flat_row = graph * t + row  # [E'] row index within the block
    degree = torch.bincount(flat_row[off], minlength=c * t) + 1
    if in_sample is None:
        keep = row < col
    else:
        keep = off & in_sample.reshape(-1).index_select(0, flat_row)
    base = offset + graph[keep] * t
    return base + row[keep], base + col[keep], degree


def rows_graph(rows: torch.Tensor, tau: float, in_sample: torch.Tensor | None, blocks: Blocks | None = None):
    """Components of the cosine graph over rows [n, D] -> (labels [n] root of each row, degree [n]).

    Row block [r0, r1) is compared with columns r0..n only (cosine is symmetric); degrees count each edge at both
    ends. Sampled regime (in_sample [1, n]): only edges with a sampled end are unioned.
    """
    n = rows.shape[0]
    device = rows.device
    blocks = blocks if blocks is not None else Blocks(device)
    labels = torch.arange(n, device=device)
    degree = torch.ones(n, dtype=torch.long, device=device)  # the diagonal
    if tau >= 1:
        return labels, degree
    unit = kernels.unit(rows, kernels.COL_ALIGN - 1)  # [n + 7, D], zero rows past n
    for r0, r1, width in kernels.triangle_blocks(n):
        sim = kernels.mm(unit[r0:r1], unit[r0 : r0 + width].T, out=blocks.get((r1 - r0, width)))[:, : n - r0]
        u, v = triangle_edges(blocks.above(sim, tau), r0)
        degree += torch.bincount(u, minlength=n) + torch.bincount(v, minlength=n)
        union(labels, *sampled_edges(u, v, in_sample))
    return labels, degree


def triangle_edges(adj: torch.Tensor, r0: int):
    """Edges (u < v, global ids) of an adjacency block [b, n - r0]: rows r0..r0+b against columns r0..n."""
    row, col = adj.nonzero().unbind(1)
    keep = row < col  # strictly above the diagonal
    return row[keep] + r0, col[keep] + r0


def sampled_edges(u: torch.Tensor, v: torch.Tensor, in_sample: torch.Tensor | None):
    """The edges that count: those with a sampled end when in_sample [1, n] is given, else all."""
    if in_sample is None:
        return u, v
    sampled = in_sample[0]
    keep = sampled.index_select(0, u) | sampled.index_select(0, v)
    return u[keep], v[keep]


def union(labels: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> None:
    """Union edges (u, v) into the flat forest ``labels`` in place: every entry ends pointing at its root, the
    smallest vertex of its component. One host sync per round."""
    if u.numel() == 0:
        return
    n_jumps = max(1, math.ceil(math.log2(labels.numel())))
    # index_select, not labels[u]: advanced indexing opens a parallel region even for tiny index tensors
    while True:
        ru, rv = labels.index_select(0, u), labels.index_select(0, v)
        if torch.equal(ru, rv):
            return
        # a root hooks onto the smallest root it meets; settled edges are no-ops (lab[r] = min(r, r))
        labels.scatter_reduce_(0, torch.maximum(ru, rv), torch.minimum(ru, rv), reduce="amin")
        for _ in range(n_jumps):  # chains are at most N long: log2(N) doublings flatten them
            labels.copy_(labels.index_select(0, labels))


def order(labels: torch.Tensor, degree: torch.Tensor):
    """labels, degree [N] -> (comp [N] in 0..K-1, rep [K]): components numbered by the index of their
    highest-degree member (ties: lowest index), rep[k] that member."""
    n = labels.numel()
    ids = torch.arange(n, device=labels.device)
    key = degree.long() * n + (n - 1 - ids)  # larger degree first, then smaller index
    best = torch.full((n,), -1, dtype=torch.long, device=labels.device).scatter_reduce_(0, labels, key, "amax")
    roots = (labels == ids).nonzero().squeeze(1)
    rep = n - 1 - best.index_select(0, roots) % n
    rep, rank = rep.sort()
    slot = torch.empty(n, dtype=torch.long, device=labels.device)
    slot.scatter_(0, roots.index_select(0, rank), torch.arange(roots.numel(), device=labels.device))
    return slot.index_select(0, labels), rep


def n_roots(labels: torch.Tensor) -> int:
    """Components in a flat forest: the entries that are their own root."""
    return int((labels == torch.arange(labels.numel(), device=labels.device)).sum())


def sum_rows(x: torch.Tensor, index: torch.Tensor, n_rows: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """[N, D] -> [n_rows, D]: row i added into row index[i] (of ``out`` if given). scatter_add with an expanded
    index: on CPU ~15x faster than index_add_ over rows."""
    if out is None:
        out = torch.zeros((n_rows, x.shape[1]), dtype=x.dtype, device=x.device)
    return out.scatter_add_(0, index[:, None].expand(-1, x.shape[1]), x)


def means(x: torch.Tensor, comp: torch.Tensor, n_comp: int) -> torch.Tensor:
    """[N, D] members -> [K, D] plain means, one per component."""
    sums = sum_rows(x, comp, n_comp)
    counts = torch.bincount(comp, minlength=n_comp).to(x.dtype)
    return sums.div_(counts[:, None])
