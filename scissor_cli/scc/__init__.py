"""LLaVA-Scissor's Semantic Connected Components (SCC): compress one video's visual tokens.

A pure tensor function: tokens [F, T, D] in, kept tokens [M, D] and per-step counts out, on the tokens' device,
similarities in float32, randomness only from an explicit torch.Generator. ``compress`` below is the paper's
algorithm; the files beside it hold the fast machinery:

* graph.py    similarity graphs and connected components (per frame, blockwise over the video, sampled regime)
* merge.py    every original token into its most similar kept token (dense, or certified on CPU)
* budget.py   the tau search for a token budget
* kernels.py  matmuls, thread policy and block buffers; sampling.py the seeded vertex draws; checks.py arguments

The definitions, the proofs behind the fast paths, the complexity table and the guarantees are in docs/scc.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from scissor_cli.scc.budget import OutputCounter, fit_budget
from scissor_cli.scc.checks import (
    check_epsilon,
    check_generator,
    check_tau,
    check_taus,
    check_tokens,
    resolve_budget,
)
from scissor_cli.scc.graph import Tokens, means, spatial_components, temporal_components
from scissor_cli.scc.kernels import serial_bookkeeping
from scissor_cli.scc.merge import assign, merge_into
from scissor_cli.scc.sampling import clone, draw_sample, sample_size

__all__ = ["CompressionResult", "compress", "draw_sample", "retention_sweep", "sample_size"]


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
    # [M] long, ascending: per kept token, the original index (f*T + t) of its component's representative, the
    # highest-degree member of its temporal component's, taken back through the spatial step
    representative: torch.Tensor
    carried: torch.Tensor | None = None  # [M, E]: ``carry`` merged with the same components and assignment

    @property
    def retention(self) -> float:
        return self.n_output / self.n_input


class _Steps(NamedTuple):
    tokens: torch.Tensor  # [M, D] float32, merged
    assignment: torch.Tensor  # [F*T]
    n_spatial: int  # M1
    spatial_per_frame: list[int]  # [F]
    representative: torch.Tensor  # [M] original index of each kept token's representative
    comp1: torch.Tensor  # [F*T] spatial component of each original token
    comp2: torch.Tensor  # [M1] kept token of each spatial token

    @property
    def n_output(self) -> int:
        return self.tokens.shape[0]


def _three_steps(video: Tokens, tau: float, tau_temporal: float, generator: torch.Generator) -> _Steps:
    """The paper's algorithm at fixed thresholds."""
    # spatial step: SCC inside each frame, [F*T, D] -> [M1, D]
    comp1, rep1 = spatial_components(video, tau, generator)
    spatial = means(video.x, comp1, rep1.numel())
    # temporal step: one SCC over all frames' spatial tokens, [M1, D] -> [M, D]
    comp2, rep2, degree = temporal_components(video, spatial, tau_temporal, generator)
    kept = means(spatial, comp2, rep2.numel())
    # merge: every original token into its most similar kept token, kept_j <- (kept_j + sum) / (count_j + 1)
    assignment = assign(video, spatial, kept, comp1, comp2, degree, tau_temporal)  # [F*T]
    merged = merge_into(video.x, kept, assignment)
    per_frame = torch.bincount(rep1 // video.t, minlength=video.f).tolist()
    # rep1 and rep2 are ascending (``order``), so rep1[rep2] is too: output order is representative order
    return _Steps(merged, assignment, rep1.numel(), per_frame, rep1.index_select(0, rep2), comp1, comp2)


def _carry(extra: torch.Tensor, steps: _Steps) -> torch.Tensor:
    """[N, E] features beside the tokens -> [M, E], merged exactly as the tokens were: spatial means by comp1,
    temporal means by comp2, then the merge by the assignment (all three are linear per column)."""
    x = extra.float()
    spatial = means(x, steps.comp1, steps.n_spatial)
    kept = means(spatial, steps.comp2, steps.n_output)
    return merge_into(x, kept, steps.assignment)


def compress(
    tokens: torch.Tensor,
    tau: float = 0.9,
    epsilon: float = 0.05,
    tau_temporal: float | None = None,
    budget: float | int | None = None,
    generator: torch.Generator | None = None,
    carry: torch.Tensor | None = None,
) -> CompressionResult:
    """Compress one video's tokens [F, T, D] -> CompressionResult with kept tokens [M, D].

    tau: cosine threshold (strict >) for both steps; any finite value, >= 1 keeps every token.
    epsilon: sampled-components tolerance in (0, 1]; sampling starts where ceil(ln N / eps^2) < N.
    tau_temporal: threshold for the temporal step; None: same as tau.
    budget: None; a float in (0, 1] (keep at most floor(ratio * F*T) tokens, at least 1); or an int >= 1. tau is
        then searched per video (``tau`` seeds the search): M never exceeds the budget, and the search stops once
        M >= 0.9 * budget. It can end below that: M need not fall as tau falls (coarser spatial means can stop
        matching in the temporal step; a sample changes with tau), so it can miss a window that some tau reaches
        and then returns the highest tau it found within the budget. Without ``tau_temporal`` one tau is searched
        for both steps; with it only the spatial tau is searched, and a budget below what one token per frame
        leaves raises OptionError. The reported tau reproduces the result.
    generator: draws the sampled regime's vertices (on the generator's device); None: CPU, seed 0. The same input
        and generator state give bit-identical output; budget mode counts on clones and leaves the generator as
        the final compression does.
    carry: None, or features [F, T, E] that ride along (e.g. Qwen3-VL's DeepStack features): never compared,
        merged with the tokens' components and assignment into ``carried`` [M, E].

    Raises OptionError for invalid arguments.
    """
    check_tokens(tokens)
    tau = check_tau("tau", tau)
    tau_t = None if tau_temporal is None else check_tau("tau_temporal", tau_temporal)
    epsilon = check_epsilon(epsilon)
    f, t, _ = tokens.shape
    if carry is not None and (carry.ndim != 3 or tuple(carry.shape[:2]) != (f, t)):
        raise ValueError(f"carry must be [{f}, {t}, E], got {tuple(carry.shape)}")
    n_budget = resolve_budget(budget, f * t)
    generator = check_generator(generator)

    def at(tau: float, g: torch.Generator) -> _Steps:
        return _three_steps(video, tau, tau if tau_t is None else tau_t, g)

    with torch.no_grad(), serial_bookkeeping(tokens.device):
        video = Tokens(tokens, epsilon, keep_sims=n_budget is not None)
        if n_budget is None:
            steps = at(tau, generator)
        else:
            tau, steps = fit_budget(video, n_budget, tau, tau_t, generator, at)
        carried = None if carry is None else _carry(carry.reshape(f * t, -1), steps).to(carry.dtype)
    return CompressionResult(
        tokens=steps.tokens.to(tokens.dtype),
        n_input=f * t,
        n_spatial=steps.n_spatial,
        n_output=steps.n_output,
        tau=tau,
        tau_temporal=tau if tau_t is None else tau_t,
        epsilon=epsilon,
        budget=n_budget,
        spatial_per_frame=steps.spatial_per_frame,
        assignment=steps.assignment,
        representative=steps.representative,
        carried=carried,
    )


def retention_sweep(
    tokens: torch.Tensor,
    taus,
    epsilon: float = 0.05,
    generator: torch.Generator | None = None,
    tau_temporal: float | None = None,
) -> list[tuple[float, int, int]]:
    """(tau, n_spatial, n_output) for each tau (in the given order), exactly as ``compress(tokens, tau, epsilon,
    generator=<a copy of generator>, tau_temporal=tau_temporal)`` counts them (``tau_temporal`` None: each tau
    for both steps). The per-frame similarities are computed once; each tau costs one blockwise temporal pass."""
    check_tokens(tokens)
    taus = check_taus(taus)
    epsilon = check_epsilon(epsilon)
    if tau_temporal is not None:
        tau_temporal = check_tau("tau_temporal", tau_temporal)
    generator = clone(check_generator(generator))
    out: dict[float, tuple[int, int]] = {}
    with torch.no_grad(), serial_bookkeeping(tokens.device):
        counter = OutputCounter(Tokens(tokens, epsilon, keep_sims=True), generator, tau_temporal, exact=True)
        for tau in sorted(set(taus), reverse=True):
            out[tau] = counter.count(tau)
    return [(tau, *out[tau]) for tau in taus]
