"""Batch throughput: ``run_batch`` jobs/s with ``--batch-size 1`` vs 4, on the tiny random checkpoint (CPU).

usage: python bench/bench_batch.py [--videos 8] [--questions 2] [--new-tokens 32]

What it measures: 8 generated 2 s clips x 2 questions = 16 jobs, 8 frames each, with a warm feature cache, so the
numbers isolate what batching changes (the ``generate`` calls). The tiny LLM is 2 layers x 64 wide, so per-call
overhead dominates and batching looks better here than on a 0.5B/7B model, whose compute grows with rows. It also
checks that batched and unbatched answers are identical.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

PATTERNS = ("testsrc", "testsrc2", "rgbtestsrc", "smptebars", "mandelbrot", "life", "cellauto", "smptehdbars")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()

    import os

    import torch
    from tiny_checkpoint import build_tiny_checkpoint

    from scissor_cli.batch import Job, run_batch
    from scissor_cli.model import load_model
    from scissor_cli.options import Profile

    work = Path(tempfile.mkdtemp(prefix="scissor-bench-batch-"))
    os.environ["SCISSOR_CACHE_DIR"] = str(work / "cache")
    ckpt = build_tiny_checkpoint(work / "tiny", layout="llava-hf", seed=0)
    videos = []
    for i in range(args.videos):
        path = work / f"v{i}.mp4"
        pattern = PATTERNS[i % len(PATTERNS)]
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                f"{pattern}=size=160x120:rate=10",
                "-t",
                "2",
                "-pix_fmt",
                "yuv420p",
                str(path),
            ],
            check=True,
            timeout=120,
        )
        videos.append(str(path))
    questions = ["What is happening?", "Describe the video in detail.", "How many people appear?"][: args.questions]
    jobs = [Job(f"{v}#{k}", v, q) for v in videos for k, q in enumerate(questions)]
    profile = Profile().override(
        sampling={"n_frames": 8}, model={"model": str(ckpt)}, generation={"max_new_tokens": args.new_tokens}
    )
    vlm = load_model(profile.model)
    run_batch(lambda: vlm, jobs, str(work / "warm.jsonl"), profile, batch_size=4)  # fills the cache, warms up

    spent = {"generate": 0.0}
    generate = vlm.generate

    def timed_generate(*a, **k):
        t0 = time.perf_counter()
        try:
            return generate(*a, **k)
        finally:
            spent["generate"] += time.perf_counter() - t0

    vlm.generate = timed_generate
    rows, answers = [], {}
    for batch_size in (1, 4, 1, 4):  # interleaved, so a noisy neighbour hits both settings alike
        spent["generate"] = 0.0
        out = work / f"b{batch_size}.jsonl"
        t0 = time.perf_counter()
        summary = run_batch(lambda: vlm, jobs, str(out), profile, batch_size=batch_size, overwrite=True)
        wall = time.perf_counter() - t0
        rows.append((batch_size, len(jobs) / wall, spent["generate"], summary.n_done))
        answers[batch_size] = [json.loads(line)["answer"] for line in out.read_text().splitlines()]

    print(
        f"{len(jobs)} jobs ({args.videos} videos x {args.questions} questions), 8 frames, "
        f"{args.new_tokens} new tokens, torch threads {torch.get_num_threads()}\n"
    )
    print("| batch size | jobs/s | time in generate (s) | done |")
    print("| --- | --- | --- | --- |")
    for batch_size, rate, gen_s, done in rows:
        print(f"| {batch_size} | {rate:.1f} | {gen_s:.2f} | {done} |")
    print("\nbatched answers == unbatched answers:", answers[1] == answers[4])


if __name__ == "__main__":
    main()
