"""Bench ``scissor serve``: requests/s and p50/p95 latency for 1, 4 and 16 concurrent clients asking different
questions about the same (cached) video, against the same requests sent one by one.

    .venv/bin/python bench/bench_serve.py --arch tiny            # the tests' tiny checkpoint (seconds)
    .venv/bin/python bench/bench_serve.py --arch 0.5b --frames 8 # the real 0.5B architecture, random weights

The server runs in this process (a thread, as ``scissor serve`` runs it, on 127.0.0.1); the clients are threads
sending plain HTTP. Before timing, one request puts the video's features in the feature cache, so what is measured
is the server's request path and the LLM: SCC, prefill and decoding, batched or not. Random 0.5B weights never
emit eos, so every answer is ``--new-tokens`` long (the same work per request at every level). The random model
runs in the dtype ``--dtype`` resolves to on this machine (``auto``: what ``scissor serve`` would load a real
checkpoint in, bf16 on a CPU with native bf16 kernels), so the numbers are the server's.
Appends a table to bench/results_serve.md with the machine's load (``uptime``) beside it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_checkpoint
sys.path.insert(0, str(ROOT / "bench"))  # bench_model.wrap_random, bench_gpu.config

QUESTIONS = [f"Question {i}: what happens in this part of the video, and who is in it?" for i in range(64)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> tuple[float, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=3600) as r:
        answer = json.loads(r.read())
    return time.perf_counter() - t0, answer


def run_level(url: str, video: str, n_clients: int, n_requests: int, offset: int) -> dict:
    """``n_requests`` different questions, ``n_clients`` at a time (1: one by one)."""

    def body(i: int) -> dict:
        return {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "video_url", "video_url": {"url": video}},
                        {"type": "text", "text": QUESTIONS[(offset + i) % len(QUESTIONS)]},
                    ],
                }
            ]
        }

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n_clients) as pool:
        results = list(pool.map(lambda i: post(url, body(i)), range(n_requests)))
    wall = time.perf_counter() - t0
    latencies = sorted(t for t, _ in results)
    rows = [a["scissor"]["batch_rows"] for _, a in results]
    assert all(a["scissor"]["cache_hit"] for _, a in results), "the video must come from the cache"
    return {
        "clients": n_clients,
        "requests": n_requests,
        "wall_s": wall,
        "rps": n_requests / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "mean_rows": statistics.mean(rows),
        "tokens_final": results[0][1]["scissor"]["tokens"]["final"],
        "completion_tokens": results[0][1]["usage"]["completion_tokens"],
        "dtype": results[0][1]["scissor"]["dtype"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=("tiny", "0.5b"), default="tiny")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--retention", type=float, default=0.1, help="the server's default budget")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=16, help="requests per level (each level and one by one)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--dtype", default="auto", help="the server's --dtype (auto: as scissor serve resolves it)")
    ap.add_argument("--video", default=str(ROOT / "samples" / "bigbuckbunny.mp4"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_serve.md"))
    ap.add_argument("--note", default="", help="a line about the conditions for the results file")
    args = ap.parse_args()
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])

    from scissor_cli import serve
    from scissor_cli.config import load_config
    from scissor_cli.settings import Overrides, resolve

    work = Path(tempfile.mkdtemp(prefix="scissor-bench-serve-"))
    os.environ.setdefault("SCISSOR_CACHE_DIR", str(work / "cache"))  # a cold cache: the warm-up fills it
    if args.arch == "tiny":
        from tiny_checkpoint import build_tiny_checkpoint

        model_dir = build_tiny_checkpoint(work / "tiny", layout="llava-hf", seed=0)
        model, load = str(model_dir), None
    else:
        from bench_gpu import config as arch
        from bench_model import wrap_random

        def load():
            import torch
            from transformers import LlavaOnevisionForConditionalGeneration

            from scissor_cli.devices import resolve_device, resolve_dtype

            device = resolve_device(profile.model.device)
            torch.manual_seed(0)
            hf_model = LlavaOnevisionForConditionalGeneration(arch("0.5b")).eval()
            return wrap_random(hf_model.to(device=device, dtype=resolve_dtype(profile.model.dtype, device)))

        model = "random-0.5b"
    overrides = Overrides(model=model, frames=args.frames, max_new_tokens=args.new_tokens, retention=args.retention,
                          dtype=args.dtype)  # fmt: skip
    config = load_config()
    profile = resolve(overrides, config)
    port = free_port()
    options = serve.ServeOptions(port=port, allow_files=(str(Path(args.video).resolve().parent),),
                                 max_batch=args.max_batch, max_queue=256)  # fmt: skip
    stop = threading.Event()
    server = threading.Thread(target=serve.run, args=(profile, options, overrides, config, load, stop), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 1800
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or not server.is_alive():
            raise SystemExit("the server did not start")
        time.sleep(0.5)

    url, video = base + "/v1/chat/completions", str(Path(args.video).resolve())
    t0 = time.perf_counter()
    post(url, {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                                          {"type": "text", "text": "warm-up"}]}]})  # fmt: skip
    warm_s = time.perf_counter() - t0
    # every question once, untimed, so no level pays a first time (a prompt's tokenization is cached per question)
    run_level(url, video, args.requests, args.requests, 0)
    sequential = run_level(url, video, 1, args.requests, 0)
    levels = [run_level(url, video, int(c), max(args.requests, int(c)), 0) for c in args.clients.split(",")]
    stop.set()
    server.join(30)
    shutil.rmtree(work, ignore_errors=True)  # the tiny checkpoint and the feature cache (unless SCISSOR_CACHE_DIR)

    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"\n## `{command}`\n",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads default; `uptime`: {uptime}. {args.note}\n",
        f"{args.arch} architecture in {sequential['dtype']}, {args.frames} frames, retention {args.retention} "
        f"({sequential['tokens_final']} visual tokens), {sequential['completion_tokens']} new tokens per answer, "
        f"--max-batch {args.max_batch}; the video cached after a warm-up request ({warm_s:.1f} s).\n",
        "| clients | requests | wall s | requests/s | p50 s | p95 s | mean rows per generate | vs one by one |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in [("one by one", sequential)] + [(str(r["clients"]), r) for r in levels]:
        lines.append(
            f"| {name} | {r['requests']} | {r['wall_s']:.2f} | {r['rps']:.2f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} "
            f"| {r['mean_rows']:.1f} | {r['rps'] / sequential['rps']:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    if not out.exists():
        out.write_text("# scissor serve: batched requests vs one by one\n\nWritten by bench/bench_serve.py.\n")
    with out.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
