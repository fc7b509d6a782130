"""Batch throughput: ``run_batch`` jobs/s with ``--batch-size 1`` vs 4, and decode-ahead (``--decode-workers``).

usage: python bench/bench_batch.py [--videos 8] [--questions 2] [--new-tokens 32]
       python bench/bench_batch.py --decode-bound [--videos 12] [--questions 4] [--seconds 60] [--keep DIR]
                                   [--workers 1,2] [--rounds 2]

``--decode-bound``: 12 one-minute 1080p H.264 clips (cut with ``-c copy`` from one generated testsrc2 clip, so
making them costs one encode), 32 frames each, the tiny model, no feature cache; ``--decode-workers 0`` vs the
default (``default_decode_workers()``), each in its own subprocess (its peak RSS, and the largest peak RSS of a
decode worker, both as VmHWM), alternating. It first times the decoder alone (wall, and CPU seconds / wall = cores
it keeps busy), then reports each run's total decode and total model time (vision + SCC + prefill + generation,
from its records; with workers, decode is timed in them), wall / max(decode, model) (target <= 1.15), each run's
CPU seconds (the process and its reaped children: workers, ffmpeg; spin-waiting threads count too, so this is
not a measure of the work itself), and whether all runs wrote the same answers. The inline run's CPU s / wall s is
how many cores it already kept busy: decode-ahead overlaps decoding with the model on the cores left idle.
``--questions`` sets how much model work each decode feeds; ``--workers 1,2`` compares several worker counts.

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
    ap.add_argument("--videos", type=int, default=None, help="default 8 (12 with --decode-bound)")
    ap.add_argument("--questions", type=int, default=None, help="default 2 (4 with --decode-bound)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--decode-bound", action="store_true", help="the decode-ahead case (see the docstring)")
    ap.add_argument("--seconds", type=float, default=60.0, help="--decode-bound: length of each clip")
    ap.add_argument("--frames", type=int, default=32, help="--decode-bound: frames sampled per video")
    ap.add_argument("--rounds", type=int, default=1, help="--decode-bound: runs of each setting (alternating)")
    ap.add_argument("--keep", type=Path, default=None, help="--decode-bound: keep (and reuse) the clips here")
    ap.add_argument("--workers", default=None, help="--decode-bound: --decode-workers values to compare with 0")
    ap.add_argument("--child", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(Path(args.child[0]), Path(args.child[1]))
    if args.decode_bound:
        return decode_bound(args)
    args.videos = args.videos or 8
    args.questions = args.questions or 2

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


# ------------------------------------------------------------------------------------------------ decode-bound
def make_decode_clips(folder: Path, n: int, seconds: float) -> list[Path]:
    """n clips of ``seconds`` at 1920x1080 24 fps: one source clip of seconds + 3 (n - 1) s, then n windows 3 s
    apart copied out without re-encoding (each starts at a keyframe, so its frames differ from its neighbours')."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = [folder / f"clip{i:02d}.mp4" for i in range(n)]
    if all(c.exists() for c in clips):
        return clips
    source = folder / "source.mp4"
    total = seconds + 3 * (n - 1)
    t0 = time.perf_counter()
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size=1920x1080:rate=24:duration={total:g}", "-c:v", "libx264", "-preset", "ultrafast",
         "-crf", "30", "-g", "48", "-pix_fmt", "yuv420p", str(source)],
        check=True, timeout=3600,
    )  # fmt: skip
    for i, clip in enumerate(clips):
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", str(3 * i), "-i", str(source), "-t",
                        f"{seconds:g}", "-c", "copy", str(clip)], check=True, timeout=600)  # fmt: skip
    source.unlink()
    print(f"made {n} clips of {seconds:g} s 1080p in {time.perf_counter() - t0:.0f} s", flush=True)
    return clips


DECODER_PROBE = r"""
import json, resource, sys, time, dataclasses
from scissor_cli import video
path, backend, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
info = dataclasses.replace(video.probe(path), backend=backend)
before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
t0 = time.perf_counter()
video.sample_frames(path, n_frames=n, info=info)
wall = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
print(json.dumps({"wall_s": wall, "cpu_s": cpu}))
"""


def vm_hwm(pid: int | str = "self") -> int:
    """Peak RSS in bytes of one process since its exec (VmHWM). Not ru_maxrss: on Linux a child's ru_maxrss starts
    at its parent's RSS at fork, so a worker started by a 900 MiB process would report >= 900 MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def watch_children(stop, peaks: dict) -> None:
    """Until ``stop`` is set: the largest VmHWM seen of each child of this process (the decode workers)."""
    import os

    me = str(os.getpid())
    while not stop.is_set():
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1] == me:
                        peaks[entry] = max(peaks.get(entry, 0), vm_hwm(entry))
                except (OSError, IndexError):
                    continue
        stop.wait(0.05)


def child(spec_path: Path, out_path: Path) -> None:
    """One run_batch in this process; writes wall time, peak RSS and the records' timings as JSON."""
    import threading

    spec = json.loads(spec_path.read_text())
    from scissor_cli.batch import Job, run_batch
    from scissor_cli.model import load_model
    from scissor_cli.options import Profile

    profile = Profile().override(
        sampling={"n_frames": spec["frames"]},
        model={"model": spec["checkpoint"], "cache": False},
        generation={"max_new_tokens": spec["new_tokens"]},
    )
    jobs = [Job(f"{v}#{k}", v, q) for v in spec["videos"] for k, q in enumerate(spec["questions"])]
    vlm = load_model(profile.model)
    stop, peaks = threading.Event(), {}
    watcher = threading.Thread(target=watch_children, args=(stop, peaks), daemon=True)
    watcher.start()
    import resource

    def cpu_s() -> float:  # this process and its reaped children (the decode workers, ffmpeg)
        return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                            resource.RUSAGE_CHILDREN)))  # fmt: skip

    cpu0, t0 = cpu_s(), time.perf_counter()
    summary = run_batch(lambda: vlm, jobs, spec["output"], profile, batch_size=1, overwrite=True,
                        decode_workers=spec["workers"])  # fmt: skip
    wall = time.perf_counter() - t0
    cpu = cpu_s() - cpu0
    stop.set()
    watcher.join()
    records = [json.loads(line) for line in Path(spec["output"]).read_text().splitlines()]
    out_path.write_text(json.dumps({
        "wall_s": wall, "cpu_s": cpu, "n_done": summary.n_done, "n_jobs": len(jobs),
        "peak_rss": vm_hwm(),
        "worker_peak_rss": max(peaks.values(), default=0),
        "answers": [r.get("answer") for r in records],
        "decode_s": sum(r["timings_s"]["decode"] for r in records if r.get("id", "").endswith("#0")),
        "model_s": sum(r["timings_s"]["vision"] + r["timings_s"]["compression"] for r in records
                       if r.get("id", "").endswith("#0"))
        + sum(r["timings_s"]["prefill"] + r["timings_s"]["generation"] for r in records),
    }))  # fmt: skip


def decode_bound(args: argparse.Namespace) -> None:
    import os

    import torch
    from tiny_checkpoint import build_tiny_checkpoint

    from scissor_cli.prefetch import default_decode_workers
    from scissor_cli.video_limits import available_cores

    n_videos, n_questions = args.videos or 12, args.questions or 4
    work = Path(tempfile.mkdtemp(prefix="scissor-bench-decode-"))
    clips = make_decode_clips(args.keep or work / "clips", n_videos, args.seconds)
    ckpt = build_tiny_checkpoint(work / "tiny", layout="llava-hf", seed=0)
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))

    usage = {}
    for backend in ("decord", "ffmpeg"):
        out = subprocess.run([sys.executable, "-c", DECODER_PROBE, str(clips[0]), backend, str(args.frames)],
                             capture_output=True, text=True, check=True, env=env)  # fmt: skip
        usage[backend] = json.loads(out.stdout.strip().splitlines()[-1])

    questions = ["What is happening?", "Describe the video in detail.", "How many people appear?",
                 "What colours are shown?", "Is there text on screen?", "What moves?"]  # fmt: skip
    questions = (questions + [f"What happens in part {k} of the video?" for k in range(n_questions)])[:n_questions]
    default = default_decode_workers()
    settings = [0] + ([int(w) for w in args.workers.split(",")] if args.workers else [default])
    results: dict[int, list[dict]] = {w: [] for w in settings}
    for _ in range(args.rounds):
        for workers in settings:
            spec = {"videos": [str(c) for c in clips], "questions": questions, "checkpoint": str(ckpt),
                    "frames": args.frames, "new_tokens": args.new_tokens, "workers": workers,
                    "output": str(work / f"w{workers}.jsonl")}  # fmt: skip
            (work / "spec.json").write_text(json.dumps(spec))
            subprocess.run([sys.executable, __file__, "--child", str(work / "spec.json"), str(work / "out.json")],
                           check=True, env=env)  # fmt: skip
            results[workers].append(json.loads((work / "out.json").read_text()))
            print(f"  decode-workers {workers}: {results[workers][-1]['wall_s']:.1f} s", flush=True)

    best = {w: min(rs, key=lambda r: r["wall_s"]) for w, rs in results.items()}
    inline = best[0]
    decode_s, model_s = inline["decode_s"], inline["model_s"]
    n_jobs = inline["n_jobs"]
    print(
        f"\n{n_videos} videos x {n_questions} questions = {n_jobs} jobs; {args.seconds:g} s 1920x1080 24 fps H.264 "
        f"(keyframe every 2 s), {args.frames} frames each, tiny model, {args.new_tokens} new tokens, batch size 1, "
        f"no cache; {available_cores()} cores, torch threads {torch.get_num_threads()}"
    )
    for backend, u in usage.items():
        print(f"decoder alone, {backend}: {u['wall_s']:.2f} s wall, {u['cpu_s'] / u['wall_s']:.2f} cores busy")
    cores = available_cores()
    print(f"inline run: total decode {decode_s:.1f} s, total model {model_s:.1f} s (sum {decode_s + model_s:.1f} s, "
          f"max {max(decode_s, model_s):.1f} s); it kept {inline['cpu_s'] / inline['wall_s']:.2f} of {cores} cores "
          "busy (CPU s / wall s), and decode-ahead can only add the rest\n")  # fmt: skip
    print("Each row's decode and model totals are its own run's (with workers, decode is timed in the workers); "
          "target: wall <= 1.15 x max(decode, model).\n")  # fmt: skip
    print("| --decode-workers | wall s | jobs/s | vs inline | total decode s | total model s | "
          "wall / max(decode, model) | CPU s | peak RSS main | peak RSS of a worker |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for workers, r in best.items():
        worker_rss = f"{r['worker_peak_rss'] / 2**20:.0f} MiB" if workers else "-"
        print(
            f"| {workers}{' (default)' if workers == default else ''} | {r['wall_s']:.1f} | "
            f"{n_jobs / r['wall_s']:.2f} | {inline['wall_s'] / r['wall_s']:.2f}x | {r['decode_s']:.1f} | "
            f"{r['model_s']:.1f} | {r['wall_s'] / max(r['decode_s'], r['model_s']):.2f} | {r['cpu_s']:.1f} | "
            f"{r['peak_rss'] / 2**20:.0f} MiB | {worker_rss} |"
        )
    print(
        "\nsame answers with and without decode-ahead:", all(r["answers"] == inline["answers"] for r in best.values())
    )
    print("all walls:", {w: [round(r["wall_s"], 1) for r in rs] for w, rs in results.items()})


if __name__ == "__main__":
    main()
