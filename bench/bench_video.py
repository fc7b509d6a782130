"""Decoding only the sampled frames: peak memory and time for 32 frames of a long 1080p clip, both backends.

    python bench/bench_video.py                 # 3-minute 1080p30 clip generated into a temporary folder
    python bench/bench_video.py --minutes 5 --keep /tmp/bench_video   # keep (and reuse) the generated clip
    python bench/bench_video.py --options [--clip FILE]   # decoder options: threads, sequential, 384 px, torchcodec
    python bench/bench_video.py --split [--rounds 3]   # one video split across decode threads/processes (ask, chat)

Each measurement runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own: the Python process
(numpy + decord, which decodes in-process) and, for ffmpeg, the ffmpeg child as well. The reference is what the
whole video would take decoded to uint8 RGB (``n_frames * H * W * 3``), which is what a decode-everything reader holds.

``--split`` (scissor_cli.video._decode_split) measures in one process, the ways interleaved round by round so load
changes hit them alike: today's serial decode (``workers=1``), the split across 1, 2, ... threads up to the cores
(the per-worker curve), the same split in worker processes (their start and the copy of their frames back
included), and torchcodec (CPU) serial and split when it imports. Every way's frames are compared with the serial
decode's (``np.array_equal``). It prints the CPU model, the cores, the load average before and after, the median
wall and CPU time of each way, and the projection to 16 cores from the thread curve: ``t(W) = s + p / W + c (W - 1)``
with ``p = 2 (t1 - t2 + c)``, ``s = t1 - p`` from the 1- and 2-thread medians and ``c`` a reader's measured open
time (each further chunk opens one). The clip is cached in ``$TMPDIR/scissor-bench-video`` (``--keep`` to choose).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTH, HEIGHT = 1920, 1080

# Runs in the measured subprocess: argv = path, backend, n_frames. Prints one JSON line.
CHILD = r"""
import dataclasses, json, resource, sys, time
import numpy as np
from scissor_cli import video
path, backend, n_frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
if backend == "decord":
    import decord  # counted in the baseline below, not in the decode
base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
info = video.probe(path)
t_probe = time.perf_counter() - t0
info = dataclasses.replace(info, backend=backend)
t0 = time.perf_counter()
clip = video.sample_frames(path, n_frames=n_frames, info=info)
t_decode = time.perf_counter() - t0
print(json.dumps({
    "backend": clip.backend, "n_frames_video": info.n_frames, "shape": list(clip.frames.shape),
    "frames_bytes": int(clip.frames.nbytes), "probe_s": t_probe, "decode_s": t_decode,
    "baseline_rss_bytes": base_kib * 1024,
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "peak_child_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
}))
"""


# --options: one decoder option per subprocess; argv = path, option, n_frames, out.npy. Prints one JSON line.
OPTION_CHILD = r"""
import json, resource, sys, time
import numpy as np
from scissor_cli import video
path, option, n_frames, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
info = video.probe(path)
idx = list(video.plan_frames(info, n_frames=n_frames).indices)
if option.startswith("decord"):
    import decord
elif option.startswith("torchcodec"):
    from torchcodec.decoders import VideoDecoder
usage = lambda: [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
before = usage()
t0 = time.perf_counter()
if option == "decord seek (default)":
    frames = video.sample_frames(path, n_frames=n_frames, info=info).frames
elif option.startswith("decord seek, threads"):
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=int(option.rsplit(" ", 1)[1]))
    frames = np.stack([vr.get_batch([i]).asnumpy()[0] for i in idx])
elif option == "decord sequential":
    vr, keep, frames = decord.VideoReader(path, ctx=decord.cpu(0)), set(idx), []
    for i in range(idx[-1] + 1):
        f = vr.next()
        if i in keep:
            frames.append(f.asnumpy())
    frames = np.stack(frames)
elif option == "decord 384x384 in the decoder":
    vr = decord.VideoReader(path, ctx=decord.cpu(0), width=384, height=384)
    frames = np.stack([vr.get_batch([i]).asnumpy()[0] for i in idx])
elif option == "ffmpeg select (fallback)":
    import dataclasses
    frames = video.sample_frames(path, n_frames=n_frames, info=dataclasses.replace(info, backend="ffmpeg")).frames
elif option.startswith("torchcodec"):
    mode = "approximate" if "approximate" in option else "exact"
    frames = VideoDecoder(path, device="cpu", seek_mode=mode).get_frames_at(idx).data.permute(0, 2, 3, 1).numpy()
else:
    raise SystemExit(f"unknown option {option}")
wall = time.perf_counter() - t0
after = usage()
np.save(out, frames)
cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]  # since exec; ru_maxrss starts at the parent's
print(json.dumps({"option": option, "decode_s": wall, "cpu_s": cpu, "shape": list(frames.shape),
                  "peak_rss_bytes": int(hwm[0].split()[1]) * 1024 if hwm else after[0].ru_maxrss * 1024}))
"""

OPTIONS = [
    "decord seek (default)",
    "decord seek, threads 1",
    "decord seek, threads 2",
    "decord sequential",
    "decord 384x384 in the decoder",
    "ffmpeg select (fallback)",
    "torchcodec exact",
    "torchcodec approximate",
]


def model_input(frames):
    """What the model sees: scissor's own 384 px preprocessing (uint8, before normalisation)."""
    import numpy as np
    import torch

    from scissor_cli.model import preprocess_frames

    # mean 0, std 1/255 undoes the normalisation: pixels back in [0, 255] after the resize
    x = preprocess_frames(frames, (384, 384), (0.0,) * 3, (1 / 255,) * 3)
    return np.asarray(torch.as_tensor(x).float())


def measure_options(path: Path, n_frames: int) -> None:
    import numpy as np

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows, ref, ref_input = [], None, None
    with tempfile.TemporaryDirectory() as tmp:
        for option in OPTIONS:
            out = Path(tmp) / "frames.npy"
            proc = subprocess.run([sys.executable, "-c", OPTION_CHILD, str(path), option, str(n_frames), str(out)],
                                  capture_output=True, text=True, env=env, timeout=1800)  # fmt: skip
            if proc.returncode != 0:
                why = (proc.stderr.strip().splitlines() or ["failed"])[-1][:140]
                rows.append(f"| {option} | – | – | – | not measured: {why} |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            frames = np.load(out)
            if ref is None:
                ref, ref_input = frames, model_input(frames)
            if frames.shape == ref.shape:
                same = "identical" if np.array_equal(frames, ref) else (
                    f"differ: mean |d| {np.abs(frames.astype(np.int16) - ref).mean():.2f}, "
                    f"max {np.abs(frames.astype(np.int16) - ref).max()}"
                )  # fmt: skip
            else:  # decoded at another size: compare what the model sees
                d = np.abs(model_input(frames) - ref_input)
                same = f"{tuple(frames.shape[1:3])}; model input differs: mean |d| {d.mean():.2f}, max {d.max():.0f}"
            rows.append(f"| {option} | {r['decode_s']:.2f} s | {r['cpu_s'] / r['decode_s']:.2f} | "
                        f"{mib(r['peak_rss_bytes'])} | {same} |")  # fmt: skip
            print(rows[-1], flush=True)
    print(f"\n{path.name}, {n_frames} frames; frames compared with the first row's (pixel values 0-255)\n")
    print("| option | decode | cores busy (CPU s / wall s) | peak RSS | frames vs decord seek (default) |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    import platform

    return names[0] if names else platform.processor() or platform.machine()


def _chunks(indices, n):
    import numpy as np

    bounds = np.linspace(0, len(indices), n + 1).round().astype(int)
    return [tuple(indices[bounds[k] : bounds[k + 1]]) for k in range(n)]


def _process_chunk(args):
    """In a worker process: one chunk with decord (one decoder thread), as ``_decode_split``'s threads do."""
    from scissor_cli import video

    info, chunk = args
    return video._decode_decord(info, chunk, threads=1)


def measure_split(path: Path, n_frames: int, rounds: int, threads_only: bool = False) -> None:
    """Serial vs split decoding of one video, interleaved over ``rounds`` (see the module docstring)."""
    import multiprocessing
    import statistics

    import decord
    import numpy as np

    from scissor_cli import video
    from scissor_cli.video_limits import available_cores

    cores = available_cores()
    info = video.probe(path)
    indices = video.plan_frames(info, n_frames=n_frames).indices
    path_s = str(path)
    has_torchcodec = video._torchcodec() is not None
    if not has_torchcodec:
        print("torchcodec not measured: it does not import (pip install torchcodec==0.11.1 beside a CPU torch)")

    def processes(n):
        # a fresh pool per decode, as a one-shot `scissor ask` would need: its start is part of the cost
        with multiprocessing.get_context("spawn").Pool(n) as pool:
            return np.concatenate(pool.map(_process_chunk, [(info, c) for c in _chunks(indices, n)]))

    ways = {"serial (today)": lambda: video.sample_frames(path, n_frames=n_frames, info=info, workers=1).frames}
    curve = list(range(1, max(2, cores) + 1))
    for n in curve:
        ways[f"threads {n}"] = lambda n=n: video._decode_split(info, indices, n, use_torchcodec=False)[0]
    if threads_only:
        has_torchcodec = False
    else:
        ways["processes 2"] = lambda: processes(2)
    if has_torchcodec:
        ways["torchcodec serial"] = lambda: video._decode_torchcodec(info, indices)
        for n in curve[1:]:
            ways[f"torchcodec threads {n}"] = lambda n=n: video._decode_split(info, indices, n, use_torchcodec=True)[0]

    load_before = os.getloadavg()
    print(f"CPU: {_cpu_model()}; cores this process may use: {cores}; load average {load_before[0]:.2f} (1 min)")
    print(f"{path.name}: {info.width}x{info.height}, {info.n_frames} frames; {len(indices)} sampled\n", flush=True)
    opens = []
    for _ in range(3):
        t0 = time.perf_counter()
        decord.VideoReader(path_s, ctx=decord.cpu(0), num_threads=1)
        opens.append(time.perf_counter() - t0)
    reader_open = statistics.median(opens)
    wall: dict[str, list[float]] = {k: [] for k in ways}
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    same: dict[str, bool] = {}
    ref = ways["serial (today)"]()
    for r in range(rounds):
        for name, fn in ways.items():
            c0 = sum(os.times()[:4])  # this process and its reaped children (the pool's workers)
            t0 = time.perf_counter()
            frames = fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(sum(os.times()[:4]) - c0)
            same[name] = same.get(name, True) and frames is not None and np.array_equal(frames, ref)
            del frames
            print(f"  round {r + 1}: {name}: {wall[name][-1]:.2f} s", flush=True)
    load_after = os.getloadavg()
    base = statistics.median(wall["serial (today)"])
    print(f"\nload average before {load_before[0]:.2f} / after {load_after[0]:.2f} (1 min), "
          f"{rounds} rounds, medians; reader open {reader_open:.3f} s\n")  # fmt: skip
    print("| way | decode wall (median) | vs serial | CPU s (median) | cores busy | frames vs serial |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ways:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"| {name} | {w:.2f} s | {base / w:.2f}x | {c:.2f} s | {c / w:.2f} | "
              f"{'identical' if same[name] else 'DIFFER'} |")  # fmt: skip
    # Projection from the per-worker curve. Wall times from a loaded machine say little (the threads share the cores
    # with other jobs), so the curve is taken in CPU seconds: a decode on W threads, each with a free core, takes
    # t(W) = (C1 + d (W - 1)) / W, C1 the one-thread decode's CPU time and d what each further chunk adds (its
    # reader's open and the decode from the keyframe before its first frame), at least the measured open time.
    med = {k: statistics.median(cpu[k]) for k in ways}
    c1_decord = med["threads 1"]
    curves = (("decord", "threads 1", "threads 2"), ("torchcodec", "torchcodec serial", "torchcodec threads 2"))
    for label, one, two in curves:
        if one not in med or two not in med:
            continue
        c1, d = med[one], max(med[two] - med[one], reader_open)
        print(f"\n{label}: C1 = {c1:.2f} CPU s, d = {d:.2f} s (C2 - C1 = {med[two] - c1:.2f}, reader open "
              f"{reader_open:.3f} s)")  # fmt: skip
        for w in (1, 2, 4, 8, 16):
            t = (c1 + d * (w - 1)) / w
            print(f"  {w:2} threads on {w:2} free cores: t = ({c1:.2f} + {d:.2f}*{w - 1}) / {w} = {t:.2f} s, "
                  f"{c1_decord / t:.1f}x decord on one thread, {base / t:.1f}x today's serial wall here")  # fmt: skip


def make_clip(path: Path, minutes: float, fps: int) -> None:
    """testsrc2 at 1080p, H.264 (keyframe every 250 frames, x264's default), no audio."""
    src = f"testsrc2=size={WIDTH}x{HEIGHT}:rate={fps}:duration={minutes * 60:g}"
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", src]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "32", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True)


def measure(path: Path, backend: str, n_frames: int) -> dict:
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), backend, str(n_frames)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=1800,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the generated clip")
    parser.add_argument("--fps", type=int, default=30, help="frame rate of the generated clip")
    parser.add_argument("--frames", type=int, default=32, help="frames to sample")
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep (and reuse) the generated clip in")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--options", action="store_true", help="compare the decoder options (see OPTIONS)")
    parser.add_argument("--clip", type=Path, default=None, help="--options: measure this clip instead")
    parser.add_argument("--split", action="store_true", help="one video split across decode threads (see above)")
    parser.add_argument("--rounds", type=int, default=3, help="--split: rounds of every way, interleaved")
    parser.add_argument("--threads-only", action="store_true", help="--split: serial and threads only (quicker)")
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        sys.exit("bench_video needs the ffmpeg binary on PATH")
    if args.options and args.clip:
        return measure_options(args.clip, args.frames)
    if args.split and args.clip:
        return measure_split(args.clip, args.frames, args.rounds, args.threads_only)

    if args.split and args.keep is None:
        args.keep = Path(tempfile.gettempdir()) / "scissor-bench-video"  # made once, reused by later runs
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_video_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"testsrc2_{WIDTH}x{HEIGHT}_{args.fps}fps_{args.minutes:g}min.mp4"
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        t0 = time.perf_counter()
        make_clip(path, args.minutes, args.fps)
        print(f"  {time.perf_counter() - t0:.0f} s, {mib(path.stat().st_size)}", flush=True)

    if args.split:
        return measure_split(path, args.frames, args.rounds, args.threads_only)
    if args.options:
        measure_options(path, args.frames)
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
        return
    results = [measure(path, backend, args.frames) for backend in ("decord", "ffmpeg")]
    n_video = results[0]["n_frames_video"]
    whole = n_video * WIDTH * HEIGHT * 3
    print(f"\n{args.minutes:g} min {WIDTH}x{HEIGHT} {args.fps} fps ({n_video} frames); sampling {args.frames} frames")
    print(f"whole video decoded to uint8 RGB would take {mib(whole)}; the {args.frames} sampled frames take "
          f"{mib(results[0]['frames_bytes'])}\n")  # fmt: skip
    header = (
        f"{'backend':8} {'decode':>8} {'probe':>7} {'python peak RSS':>16} {'(baseline)':>11} {'ffmpeg peak RSS':>16}"
    )
    print(header)
    for r in results:
        child = mib(r["peak_child_rss_bytes"]) if r["backend"] == "ffmpeg" else "-"
        print(
            f"{r['backend']:8} {r['decode_s']:7.1f}s {r['probe_s']:6.2f}s {mib(r['peak_rss_bytes']):>16} "
            f"{mib(r['baseline_rss_bytes']):>11} {child:>16}"
        )
    if args.json:
        args.json.write_text(json.dumps({"clip": str(path), "whole_video_bytes": whole, "results": results}, indent=2))
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
