"""``make gpu-check``: everything a GPU owner can check in one command, in under 5 minutes, with no network.

    python bench/gpu_check.py [--out bench/results_gpu.md] [--device cuda] [--no-7b] [--no-qwen]

Steps (each one's time is printed; the run stops at the first failing step and exits 1):

1. the ``gpu``-marked tests (``pytest -m gpu``): SCC on CUDA equals SCC on CPU on 32 x 196 x 896 video-like tokens
   (tau 0.9, 0.8, a 10 % budget), the tiny checkpoint in bfloat16 and float16 on CUDA (answers, features within
   cosine 0.99 of float32, SCC in half precision), and the real-checkpoint GPU test when the weights are in the local
   Hugging Face cache (it skips, saying so, when they are not: nothing is downloaded);
2. ``bench/bench_gpu.py`` at the real 0.5B architecture (random weights, 32 frames, bfloat16), and 7B when the GPU
   has >= 40 GiB free; then Qwen2.5-VL-3B and Qwen3-VL-4B, and their 7B / 8B when it has >= 40 GiB free (unless
   ``--no-qwen``), writing its table to ``--out``;
3. where vLLM is installed, ``bench/bench_engine.py`` at the 0.5B architecture: ``--engine hf`` against
   ``--engine vllm`` on the same batch (``results_engine_gpu.md`` beside ``--out``).

Without CUDA it stops before running anything: one line saying what torch sees, a hint, exit code 2.
HF_HUB_OFFLINE=1 is set for every step. Which wheels an offline machine needs: docs/performance.md, "On a GPU".
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 300  # the whole check is meant to fit in 5 minutes on one GPU
MIN_FREE_7B_GIB = 40  # 7B in bf16 (~16 GiB of weights) + 32 frames of activations, with room to spare


def fail(message: str, hint: str, code: int) -> None:
    print(f"gpu-check: {message}\nhint: {hint}", file=sys.stderr)
    sys.exit(code)


def step(name: str, cmd: list[str], timeout: float, env: dict) -> str:
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, stdout=subprocess.PIPE, text=True)
    except subprocess.TimeoutExpired:
        fail(f"{name} did not finish within {timeout:.0f} s", "run the step by hand to see where it stalls", 1)
    print(proc.stdout, end="", flush=True)
    print(f"== {name}: exit {proc.returncode}, {time.perf_counter() - t0:.0f} s", flush=True)
    if proc.returncode != 0:
        fail(f"{name} failed (exit {proc.returncode})", "the output above says which check; report it", 1)
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results_gpu.md", help="where bench_gpu's table goes")
    ap.add_argument("--device", default="cuda", help="cuda or cuda:N")
    ap.add_argument("--no-7b", action="store_true", help="skip the 7B architectures even when they fit")
    ap.add_argument("--no-qwen", action="store_true", help="skip the Qwen2.5-VL / Qwen3-VL rows")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        fail(
            f"no CUDA GPU: torch {torch.__version__} sees none ({build})",
            "run it on a machine with an NVIDIA GPU and a CUDA build of torch (docs/performance.md, 'On a GPU'); "
            "check with: python -c 'import torch; print(torch.cuda.is_available())'",
            2,
        )
    device = torch.device(args.device)
    free, total = torch.cuda.mem_get_info(device)
    name = torch.cuda.get_device_name(device)
    print(f"gpu-check on {name} ({total / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free), torch {torch.__version__}")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
               os.environ.get("PYTHONPATH")])))  # fmt: skip
    t0 = time.perf_counter()
    step("gpu tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rs", "tests"], 180, env)

    big = not args.no_7b and free / 2**30 >= MIN_FREE_7B_GIB
    archs = ["0.5b", *(["7b"] if big else [])]
    if not args.no_qwen:
        archs += ["qwen2.5-vl-3b", "qwen3-vl-4b", *(["qwen2.5-vl-7b", "qwen3-vl-8b"] if big else [])]
    if not args.no_7b and not big:
        print(f"7B / 8B skipped: {free / 2**30:.0f} GiB free, they need {MIN_FREE_7B_GIB}")
    left = max(60.0, BUDGET_S - (time.perf_counter() - t0))
    table = step("bench_gpu", [sys.executable, "bench/bench_gpu.py", "--device", args.device, "--arch", *archs],
                 left, env)  # fmt: skip
    args.out.write_text(f"Measured with `make gpu-check` on {name}.\n\n{table}")
    if importlib.util.find_spec("vllm") is not None:  # the engine rows: hf vs vllm on the same batch
        engine_out = args.out.with_name("results_engine_gpu.md")
        step("bench_engine", [sys.executable, "bench/bench_engine.py", "--arch", "0.5b", "--device", args.device,
                              "--rounds", "1", "--out", str(engine_out)], max(120.0, BUDGET_S), env)  # fmt: skip
    else:
        print("bench_engine skipped: vLLM is not installed here (pip install 'scissor-cli[vllm]')")
    total_s = time.perf_counter() - t0
    print(f"gpu-check passed in {total_s:.0f} s; bench_gpu's table is in {args.out}")
    if total_s > BUDGET_S:
        print(f"note: took longer than the {BUDGET_S} s it is meant to; pass --no-7b for a shorter check")


if __name__ == "__main__":
    main()
