"""The sampled regime's vertex draws: N' = min(N, ceil(ln N / epsilon^2)) vertices per graph, from a torch.Generator.

Draw order in one compression: the spatial step's sets (one per frame, only when T' < T), then the temporal step's
(only when M1' < M1). Cost: O(N log N) per set (a sort of random keys).
"""

from __future__ import annotations

import math

import torch


def sample_size(n: int, epsilon: float) -> int:
    """N' = min(N, ceil(ln(N) / epsilon^2)); N' = N means exact components."""
    if n <= 1:
        return n
    return min(n, math.ceil(math.log(n) / epsilon**2))


def draw_sample(n: int, n_sample: int, generator: torch.Generator, n_sets: int = 1) -> torch.Tensor:
    """[n_sets, n_sample] vertex indices, each row uniform without replacement, on the generator's device.

    Random float64 keys sorted per row (a batched randperm); the tests' slow reference draws with this function
    too, so both see the same sample.
    """
    keys = torch.rand((n_sets, n), generator=generator, device=generator.device, dtype=torch.float64)
    return keys.argsort(dim=1)[:, :n_sample]


def sample_mask(n: int, epsilon: float, generator: torch.Generator, n_sets: int, device) -> torch.Tensor | None:
    """[n_sets, n] bool, True for sampled vertices; None in the exact regime (nothing drawn)."""
    n_sample = sample_size(n, epsilon)
    if n_sample >= n:
        return None
    idx = draw_sample(n, n_sample, generator, n_sets).to(device)
    mask = torch.zeros((n_sets, n), dtype=torch.bool, device=device)
    return mask.scatter_(1, idx, True)


def clone(generator: torch.Generator) -> torch.Generator:
    """A generator in the same state (drawing from it leaves the original untouched)."""
    g = torch.Generator(device=generator.device)
    g.set_state(generator.get_state())
    return g
