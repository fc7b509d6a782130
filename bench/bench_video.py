"""Decoding only the sampled frames: peak memory and time for 32 frames of a long 1080p clip, both backends.

    python bench/bench_video.py                 # 3-minute 1080p30 clip generated into a temporary folder
    python bench/bench_video.py --minutes 5 --keep /tmp/bench_video   # keep (and reuse) the generated clip

Each measurement runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own: the Python process
(numpy + decord, which decodes in-process) and, for ffmpeg, the ffmpeg child as well. The reference is what the
whole video would take decoded to uint8 RGB (``n_frames * H * W * 3``), which is what a decode-everything reader holds.
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
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        sys.exit("bench_video needs the ffmpeg binary on PATH")

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_video_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"testsrc2_{WIDTH}x{HEIGHT}_{args.fps}fps_{args.minutes:g}min.mp4"
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        t0 = time.perf_counter()
        make_clip(path, args.minutes, args.fps)
        print(f"  {time.perf_counter() - t0:.0f} s, {mib(path.stat().st_size)}", flush=True)

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
