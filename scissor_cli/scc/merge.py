"""The merge: each original token goes to its most similar kept token (argmax cosine, ties to the lowest index), and
kept_j <- (kept_j + sum of its originals) / (count_j + 1).

Two ways to the same argmax:

* ``assign_dense``: every score, N x M in row blocks of CACHE_BLOCK_ELEMENTS; O(N M D) time, O(min(N M, 2^21))
  extra memory. Used on GPUs and for few kept tokens.
* ``assign_certified`` (CPU): each original starts at its *anchor*, the kept token its own components led to; a
  kept token can only score at least as high if it lies within twice the original's angle from the anchor
  (triangle inequality on the sphere). Kept-token Gram rows give each anchor its candidates; originals whose
  anchor has none are done, the others are scored against their candidates only. O(N D + M_a M D + P D) time
  (M_a anchors needing Gram rows, P = rows x candidates of the open anchors), O(N + P) extra memory. The proof
  and the float32 safety margin are in docs/scc.md.
"""

from __future__ import annotations

import torch

from scissor_cli.scc import kernels
from scissor_cli.scc.graph import Tokens, sum_rows

ARGMAX_CHUNK = 64
CANDIDATE_MIN_KEPT = 64  # the merge is certified on CPU from this many kept tokens on
CANDIDATE_MARGIN = 1e-4  # slack on the candidate test (float32 cosine errors are ~1e-6): more candidates, same answer
GROUP_OVERHEAD = 2_000_000  # one per-anchor scoring step costs about this many multiply-adds of a big matmul
SMALL_MM_PENALTY = 5  # and its small matmul runs about this many times slower per multiply-add
RIVAL_ROWS_MAX = 0.56  # fewer anchors than this fraction of M ask for rivals: their Gram rows, else the triangle
GATHER_COST = 140  # gathering a row of D floats costs about as much as 140 D multiply-adds (one thread, 2 cores)


def assign(
    video: Tokens,
    spatial: torch.Tensor,
    kept: torch.Tensor,
    comp1: torch.Tensor,
    comp2: torch.Tensor,
    degree: torch.Tensor,
    tau_temporal: float,
) -> torch.Tensor:
    """-> [N] long: the kept token [M, D] each original token is most similar to (ties: the lowest index).

    comp1 [N] and comp2 [M1] are the spatial and temporal components (their composition is each original's anchor),
    degree [M1] the temporal graph's degrees. argmax_j cos(x_i, k_j) = argmax_j x_i . k_j / |k_j| (|x_i| is common
    to the row; a zero row scores 0 everywhere and goes to index 0 like any all-tie row).
    """
    m = kept.shape[0]
    unit = kernels.unit(kept, kernels.COL_ALIGN - 1)  # [M + 7, D], zero rows past M (aligned slices)
    if video.device.type != "cpu" or m < CANDIDATE_MIN_KEPT:
        return assign_dense(video, unit, m)
    anchor = comp2.index_select(0, comp1)  # [N]
    isolated, bound = isolated_kept(spatial, comp2, degree, kept, tau_temporal)
    return assign_certified(video, unit, m, anchor, isolated, bound)


def merge_into(x: torch.Tensor, kept: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """x [N, D], kept [M, D], assignment [N] -> [M, D]: (kept_j + sum of its originals) / (count_j + 1)."""
    m = kept.shape[0]
    sums = sum_rows(x, assignment, m, out=kept.clone())
    counts = torch.bincount(assignment, minlength=m).to(kept.dtype)
    return sums.div_((counts + 1)[:, None])


def argmax_rows(sim: torch.Tensor) -> torch.Tensor:
    """sim [R, M] -> [R] long: each row's first maximum, as ``argmax(dim=1)``, ~2.3x faster on CPU.

    The maximum of each run of ARGMAX_CHUNK columns (vectorised amax), the first chunk holding the row maximum
    (it holds the first occurrence), then the first maximum inside that chunk.
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


def assign_dense(video: Tokens, unit: torch.Tensor, m: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Argmax over all M kept tokens (unit [M + 7, D]) for every original, or for those in ``rows``, in row blocks
    of CACHE_BLOCK_ELEMENTS scores (a block of ``rows`` is gathered at a time)."""
    unit_t = unit[: kernels.aligned(m)].T  # [D, M_pad]
    m_pad = unit_t.shape[1]
    step = max(1, kernels.CACHE_BLOCK_ELEMENTS // m_pad)
    chunks = video.x.split(step) if rows is None else (video.x.index_select(0, r) for r in rows.split(step))
    blocks = video.blocks
    return torch.cat([argmax_rows(kernels.mm(a, unit_t, out=blocks.get((len(a), m_pad)))[:, :m]) for a in chunks])


def isolated_kept(spatial: torch.Tensor, comp: torch.Tensor, degree: torch.Tensor, kept: torch.Tensor, tau: float):
    """Kept tokens whose every rival is provably far -> (isolated [M] bool, bound).

    A spatial token s_p with no temporal neighbour (degree 1: the diagonal) is a kept token of its own and has
    cosine <= tau with every other spatial token. Any other kept token k_j is a mean of spatial tokens, so
    cos(s_p, k_j) <= tau * rho_j with rho_j = (mean member norm) / |k_j| >= 1 (zero k_j: cosine 0).
    bound = max_j of that plus a float32 slack, shared by every isolated token.
    """
    m = kept.shape[0]
    isolated = torch.zeros(m, dtype=torch.bool, device=kept.device)
    isolated[comp[degree == 1]] = True
    member_norms = sum_rows(torch.linalg.vector_norm(spatial, dim=1, keepdim=True), comp, m)[:, 0]
    mean_norm = torch.linalg.vector_norm(kept, dim=1) * torch.bincount(comp, minlength=m)  # count_j * |k_j|
    rho = member_norms / torch.where(mean_norm > 0, mean_norm, torch.ones_like(mean_norm))
    bound = torch.where(mean_norm > 0, tau * rho, torch.zeros_like(rho))
    return isolated, float(bound.max()) + CANDIDATE_MARGIN / 10


def assign_certified(
    video: Tokens, unit: torch.Tensor, m: int, anchor: torch.Tensor, isolated: torch.Tensor, rival_bound: float
) -> torch.Tensor:
    """The merge's argmax without scoring every original against every kept token; same answer, same ties.

    A kept token k can score at least as high as the anchor k0 for a row x only if cos(k0, k) >= 2 cos^2(x, k0) - 1.
    One limit per anchor (from its worst row, minus CANDIDATE_MARGIN) selects its candidates; anchors in
    ``isolated`` whose limit is above ``rival_bound`` have none without any Gram row. Open rows are scored against
    their anchor's candidates (ascending, so ties still go to the lowest index), one small matmul per anchor, or
    against all M when that is cheaper.
    """
    n, d = video.n, video.d
    device = video.device
    # cosine of every original with its anchor, in cache-sized row blocks
    cos0 = torch.empty(n, device=device)
    step = max(1, kernels.CACHE_BLOCK_ELEMENTS // d)
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        k = torch.index_select(unit, 0, anchor[r0:r1], out=video.blocks.get((r1 - r0, d)))
        torch.sum(k.mul_(video.x[r0:r1]), dim=1, out=cos0[r0:r1])
    cos0.mul_(video.inv_norm)  # zero rows: 0
    worst = torch.full((m,), 2.0, device=device).scatter_reduce_(0, anchor, cos0, reduce="amin")
    # worst <= 0: the anchor's cone reaches past 90 degrees, every kept token is a candidate
    limit = torch.where(worst > 0, 2 * worst * worst - 1 - CANDIDATE_MARGIN, torch.full_like(worst, -3.0))

    settled = isolated & (limit > rival_bound)
    owners, rivals, cosines = _rivals(video, unit, m, limit, (~settled).nonzero().squeeze(1))
    # a row is open when its own cone (not just its anchor's worst row's) holds the anchor's nearest rival
    nearest = torch.full((m,), -3.0, device=device).scatter_reduce_(0, owners, cosines, reduce="amax")
    row_limit = torch.where(cos0 > 0, 2 * cos0 * cos0 - 1 - CANDIDATE_MARGIN, torch.full_like(cos0, -3.0))
    open_rows = (row_limit < nearest.index_select(0, anchor)).nonzero().squeeze(1)
    assignment = anchor.clone()
    if open_rows.numel() == 0:
        return assignment
    if (n - open_rows.numel()) * m < GATHER_COST * open_rows.numel():  # scoring the few settled rows is cheaper
        return assign_dense(video, unit, m)  # than gathering the many open ones
    rows_per = torch.bincount(anchor.index_select(0, open_rows), minlength=m)  # [M]
    open_anchors = (rows_per > 0).nonzero().squeeze(1)
    keep = (rows_per > 0).index_select(0, owners)
    owners, rivals = owners[keep], rivals[keep]
    rows_per = rows_per.index_select(0, open_anchors)
    cand_per = torch.bincount(owners, minlength=m).index_select(0, open_anchors) + 1  # + the anchor itself
    pair_work = int((rows_per * cand_per).sum())
    dense_work = open_rows.numel() * m * d
    if open_anchors.numel() * GROUP_OVERHEAD + SMALL_MM_PENALTY * pair_work * d >= dense_work:
        assignment[open_rows] = assign_dense(video, unit, m, open_rows)
        return assignment

    # candidates per open anchor, ascending (the anchor included), and its open rows, both grouped by anchor
    owners = torch.cat([owners, open_anchors])
    key, _ = (owners * m + torch.cat([rivals, open_anchors])).sort()
    cands = key % m
    rows = open_rows.index_select(0, anchor.index_select(0, open_rows).argsort(stable=True))
    best = []
    c0 = r0 = 0
    for c1, r1 in zip(cand_per.cumsum(0).tolist(), rows_per.cumsum(0).tolist(), strict=True):
        c, r = cands[c0:c1], rows[r0:r1]
        scores = torch.mm(video.x.index_select(0, r), unit.index_select(0, c).T)  # [rows, candidates]
        best.append(c.index_select(0, argmax_rows(scores)))
        c0, r0 = c1, r1
    return assignment.index_copy_(0, rows, torch.cat(best))


def _rivals(video: Tokens, unit: torch.Tensor, m: int, limit: torch.Tensor, asking: torch.Tensor):
    """Triples (owner, rival, cosine) of kept tokens with cos(owner, rival) > limit[owner], owner != rival, for the
    owners in ``asking`` (others may show up too: more candidates never change the answer). Few askers: their Gram
    rows; else the whole Gram matrix in upper-triangle row blocks, each pair checked against both ends."""
    blocks = video.blocks
    owners, rivals, cosines = [asking[:0]], [asking[:0]], [unit.new_empty(0)]
    if asking.numel() < RIVAL_ROWS_MAX * m:
        width = kernels.aligned(m)
        for ask in asking.split(max(1, kernels.CACHE_BLOCK_ELEMENTS // width)):
            sim = kernels.mm(unit.index_select(0, ask), unit[:width].T, out=blocks.get((ask.numel(), width)))[:, :m]
            flag = torch.gt(sim, limit.index_select(0, ask)[:, None], out=blocks.get(sim.shape, torch.bool))
            i, j = flag.nonzero().unbind(1)
            other = ask.index_select(0, i) != j
            i, j = i[other], j[other]
            owners.append(ask.index_select(0, i))
            rivals.append(j)
            cosines.append(sim[i, j])
        return torch.cat(owners), torch.cat(rivals), torch.cat(cosines)
    for r0, r1, width in kernels.triangle_blocks(m):
        sim = kernels.mm(unit[r0:r1], unit[r0 : r0 + width].T, out=blocks.get((r1 - r0, width)))[:, : m - r0]
        flag = blocks.get((r1 - r0, m - r0), torch.bool)
        for lim, by_row in ((limit[r0:r1, None], True), (limit[None, r0:m], False)):
            i, j = torch.gt(sim, lim, out=flag).nonzero().unbind(1)
            upper = j > i  # strictly above the diagonal: each unordered pair once per direction
            i, j = i[upper], j[upper]
            cosines.append(sim[i, j])
            i, j = i + r0, j + r0
            owners.append(i if by_row else j)
            rivals.append(j if by_row else i)
    return torch.cat(owners), torch.cat(rivals), torch.cat(cosines)
