"""A slow, obviously-correct SCC (numpy + Python union-find, one frame at a time), written straight from
the definitions in docs/scc.md, plus synthetic "video-like" and clip-derived tokens. Used by tests/test_scc.py
and bench/bench_scc.py.

For the tests the reference computes cosines in float64 and reports the smallest distance of any compared
similarity from its threshold (and of any merge argmax from the runner-up), so a test can tell a real
disagreement from a float32 rounding tie. The benchmark times it lean (``margins=False``) in float32, as the
authors' code computes. The sampled regime uses ``scissor_cli.scc.draw_sample`` in the same order as
``compress`` (per-frame samples, then the temporal sample), so both see the same vertices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from scissor_cli.scc import draw_sample, sample_size


@dataclass
class ReferenceResult:
    tokens: np.ndarray  # [M, D] float64
    assignment: np.ndarray  # [F*T]
    n_spatial: int
    spatial_per_frame: list[int]
    margin: float  # min |cos - tau| over all compared pairs; min top-1/top-2 cosine gap in the merge


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def scc_reference(k: np.ndarray, tau: float, sample: np.ndarray | None, margins: bool = True):
    """SCC on [N, D] -> (means [K, D] in output order, members per component, margin or inf)."""
    n = k.shape[0]
    unit = _unit(k)
    cos = unit @ unit.T
    adj = cos > tau
    np.fill_diagonal(adj, True)
    margin = math.inf
    if margins and n > 1:
        margin = float(np.abs(cos - tau)[~np.eye(n, dtype=bool)].min())

    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    if sample is None:  # exact: every edge
        for i in range(n):
            for j in np.flatnonzero(adj[i, i + 1 :]) + i + 1:
                union(i, int(j))
    else:  # sampled: each sampled vertex with all its neighbours
        for s in sample:
            for j in np.flatnonzero(adj[s]):
                union(int(s), int(j))

    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)  # every vertex under its root, however deep
    degree = adj.sum(axis=1)
    reps = {root: max(members, key=lambda i: (degree[i], -i)) for root, members in groups.items()}
    ordered = sorted(groups, key=lambda root: reps[root])
    members = [groups[root] for root in ordered]
    means = np.stack([k[m].mean(axis=0) for m in members])
    return means, members, margin


def compress_reference(
    tokens: torch.Tensor,
    tau: float = 0.9,
    epsilon: float = 0.05,
    tau_temporal: float | None = None,
    generator: torch.Generator | None = None,
    dtype=np.float64,
    margins: bool = True,
):
    """The three steps of SCC, one frame at a time, in ``dtype``; ``margins=False`` skips the diagnostics."""
    tau_temporal = tau if tau_temporal is None else tau_temporal
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    x = tokens.cpu().numpy().astype(dtype)
    f, t, d = x.shape

    samples = [None] * f
    if sample_size(t, epsilon) < t:
        drawn = draw_sample(t, sample_size(t, epsilon), generator, f).cpu().numpy()
        samples = list(drawn)
    spatial, per_frame, gaps = [], [], []
    for i in range(f):
        means, _, margin = scc_reference(x[i], tau, samples[i], margins)
        spatial.append(means)
        per_frame.append(means.shape[0])
        gaps.append(margin)
    spatial = np.concatenate(spatial)

    m1 = spatial.shape[0]
    sample = None
    if sample_size(m1, epsilon) < m1:
        sample = draw_sample(m1, sample_size(m1, epsilon), generator, 1)[0].cpu().numpy()
    kept, _, margin = scc_reference(spatial, tau_temporal, sample, margins)
    gaps.append(margin)

    flat = x.reshape(f * t, d)
    cos = _unit(flat) @ _unit(kept).T  # [N, M]
    assignment = cos.argmax(axis=1)
    if margins and kept.shape[0] > 1:
        top2 = np.sort(cos, axis=1)[:, -2:]
        gaps.append(float((top2[:, 1] - top2[:, 0]).min()))
    merged = kept.copy()
    counts = np.zeros(kept.shape[0])
    for i, j in enumerate(assignment):
        merged[j] += flat[i]
        counts[j] += 1
    merged /= (counts + 1)[:, None]
    return ReferenceResult(merged, assignment, m1, per_frame, min(gaps))


def video_like_tokens(
    n_frames: int, n_tokens: int = 196, dim: int = 896, seed: int = 0, n_centres: int = 300
) -> torch.Tensor:
    """[F, T, D] float32 tokens that merge like video features do (random tokens almost never merge at 0.9).

    A scene is ``n_centres`` random "content" vectors laid out as a coarse label map (2x2-cell blocks, so a
    region spans several tokens); the map scrolls by one cell every 4 frames and 30 % of the blocks change
    content every 4 frames (motion, cuts). A token is its content vector + a slow per-content drift (random
    walk, 0.05 per frame) + isotropic noise whose level varies per token (sigma uniform in [0.1, 0.6] of the
    content's scale). Clean tokens of one region merge within a frame and across frames; tokens with sigma
    above ~0.48 are too far from any cosine 0.9 neighbour and stay alone. Result: about 35-40 % kept by the
    spatial step and 20-30 % overall at tau 0.9, 20 % and 2-5 % at tau 0.8 (8 to 256 frames of 196 tokens).
    """
    g = np.random.default_rng(seed)
    side = max(1, int(round(math.sqrt(n_tokens))))
    centres = g.standard_normal((n_centres, dim)).astype(np.float32)
    coarse = g.integers(0, n_centres, size=(side, side))
    out = np.empty((n_frames, n_tokens, dim), dtype=np.float32)
    drift = np.zeros((n_centres, dim), dtype=np.float32)
    for f in range(n_frames):
        if f and f % 4 == 0:
            change = g.random(coarse.shape) < 0.3
            coarse = np.where(change, g.integers(0, n_centres, size=coarse.shape), coarse)
        drift += 0.05 * g.standard_normal(drift.shape).astype(np.float32)
        rows = (np.arange(side)[:, None] // 2 + f // 4) % side
        cols = np.arange(side)[None, :] // 2
        labels = np.resize(coarse[rows, cols].reshape(-1), n_tokens)
        sigma = g.uniform(0.1, 0.6, size=(n_tokens, 1)).astype(np.float32)
        noise = g.standard_normal((n_tokens, dim)).astype(np.float32)
        out[f] = centres[labels] + drift[labels] + sigma * noise
    return torch.from_numpy(out)


def clip_tokens(path: str, n_frames: int = 32, dim: int = 896, seed: int = 0) -> torch.Tensor:
    """[F, 196, dim] float32 tokens derived from a real clip, standing in for vision features.

    F frames spread evenly over the clip, each resized to 384 x 384; its 27 x 27 patches of 14 x 14 pixels (the
    SigLIP grid), each less its own mean (brightness), go through one fixed random projection (seeded) and a
    ReLU, then 2 x 2 bilinear pooling to
    14 x 14 = 196 tokens per frame (as LLaVA-OneVision pools). Not the model's features, but they share what SCC
    cares about: neighbouring patches and consecutive frames are similar, and all tokens share a mean direction.
    """
    import decord

    reader = decord.VideoReader(path)
    idx = np.linspace(0, len(reader) - 1, n_frames).round().astype(int).tolist()
    frames = torch.from_numpy(reader.get_batch(idx).asnumpy()).permute(0, 3, 1, 2).float() / 255  # [F, 3, H, W]
    frames = torch.nn.functional.interpolate(frames, size=(384, 384), mode="bilinear", antialias=True)
    patches = frames[:, :, :378, :378].unfold(2, 14, 14).unfold(3, 14, 14)  # [F, 3, 27, 27, 14, 14]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n_frames, 27 * 27, 3 * 14 * 14)
    patches = patches - patches.mean(dim=2, keepdim=True)
    g = np.random.default_rng(seed)
    proj = torch.from_numpy(g.standard_normal((3 * 14 * 14, dim)).astype(np.float32) / math.sqrt(3 * 14 * 14))
    feats = torch.relu(patches @ proj).reshape(n_frames, 27, 27, dim).permute(0, 3, 1, 2)
    pooled = torch.nn.functional.interpolate(feats, size=(14, 14), mode="bilinear")  # [F, dim, 14, 14]
    return pooled.flatten(2).transpose(1, 2).contiguous()
