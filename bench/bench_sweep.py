"""Bench a retention sweep in batch mode against single-level runs, on the REAL llava-onevision-qwen2-0.5b-ov
architecture with random weights (nothing to download), CPU: the sweep decodes and encodes each video once for all
its levels, so it should cost little more than one single-level run and far less than one run per level.

    .venv/bin/python bench/bench_sweep.py [--frames 8] [--videos 4] [--levels 1,0.5,0.35,0.1,0.05]
                                          [--single 0.1] [--new-tokens 8] [--out bench/results_sweep.md]

Each measurement is a whole ``run_batch`` (model instantiated once beforehand, not counted; feature cache off),
after an unreported warm-up run on one video: the sweep over ``--levels``, then one single-level run per level;
"one single-level run" is the one at ``--single``. From the records, each run's time is split into decode + vision
tower (paid once per video and run) and the LLM (prefill + generation, paid per level whatever the run). The videos
are copies of the sample clip under different names (each is decoded and encoded: the cache is off). Answers are
greedy and generated one per call (``--batch-size 1``: on a CPU, batching rows of different lengths only pads the
short ones), so the sweep's answers at a level must equal that level's single run: the bench checks it. Random
weights: timings are the architecture's, answers are gibberish. The SigLIP tower costs several seconds per 384 px
frame on a 2-core CPU and the uncompressed LLM prefill about as much, so the defaults take over an hour there;
``--frames 2 --videos 2`` keeps the same ratios in about ten minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_checkpoint.build_tokenizer
sys.path.insert(0, str(ROOT / "bench"))  # bench_gpu.config: the real architectures
sys.path.insert(0, str(ROOT))

QUESTION = "What is happening in this video?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--levels", default="1,0.5,0.35,0.1,0.05", help="the sweep's retention levels")
    ap.add_argument("--single", type=float, default=0.1, help="the level of the single-level run")
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each measurement; the fastest is reported")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--single-only", action="store_true", help="skip the run per level: only the --single one")
    ap.add_argument("--video", default=str(ROOT / "samples" / "bigbuckbunny.mp4"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_sweep.md"))
    ap.add_argument("--note", default="", help="a line about the conditions (e.g. other load) for the results file")
    args = ap.parse_args()
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])

    import torch
    from bench_gpu import config
    from bench_model import wrap_random
    from transformers import LlavaOnevisionForConditionalGeneration

    from scissor_cli.batch import Sweep, parse_levels, run_batch
    from scissor_cli.jobs import Job
    from scissor_cli.options import GenerationOptions, ModelOptions, Profile, SamplingOptions

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - a script, progress on stderr
    levels = tuple(parse_levels("--retention", args.levels))
    if args.threads:
        torch.set_num_threads(args.threads)  # 1 thread: no spinning thread pool fighting other load for cores
    torch.manual_seed(0)
    t = time.perf_counter()
    hf_model = LlavaOnevisionForConditionalGeneration(config("0.5b")).eval()
    log(f"instantiated the random 0.5B architecture in {time.perf_counter() - t:.1f} s")
    vlm = wrap_random(hf_model)
    vision_calls: list[int] = []
    vlm.hf_model.model.vision_tower.register_forward_hook(lambda *a: vision_calls.append(1))
    profile = Profile(
        sampling=SamplingOptions(n_frames=args.frames),
        generation=GenerationOptions(max_new_tokens=args.new_tokens),
        model=ModelOptions(model="random", cache=False),
    )

    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for i in range(args.videos):
            path = Path(tmp) / f"video{i}.mp4"
            shutil.copyfile(args.video, path)
            jobs.append(Job(f"v{i}", str(path), QUESTION))

        def timed(name: str, sweep: Sweep | None, p: Profile) -> tuple[float, int, list[dict]]:
            """(wall time, vision tower calls, records) of the fastest of ``--repeats`` runs: on a shared machine
            the minimum is the least disturbed measurement."""
            return min((once(name, sweep, p) for _ in range(args.repeats)), key=lambda run: run[0])

        def once(name: str, sweep: Sweep | None, p: Profile) -> tuple[float, int, list[dict]]:
            out = Path(tmp) / f"{name}.jsonl"
            n0 = len(vision_calls)
            t0 = time.perf_counter()
            run_batch(lambda: vlm, jobs, str(out), p, overwrite=True, batch_size=args.batch_size, sweep=sweep)
            wall = time.perf_counter() - t0
            records = [json.loads(line) for line in out.read_text().splitlines()]
            bad = [r for r in records if r["status"] != "ok"]
            if bad:
                raise SystemExit(f"{name}: {bad[0]['error']}")
            log(f"{name}: {wall:.1f} s, {len(records)} records, {len(vision_calls) - n0} vision tower calls")
            return wall, len(vision_calls) - n0, records

        def at(level: float) -> Profile:
            return Sweep("retention", (level,)).profile_for(profile, level)

        # warm-up (first-call allocations, thread pools), not reported: otherwise whichever run is first pays it
        warm, jobs = jobs, jobs[:1]
        timed("warm-up", None, at(args.single))
        jobs = warm
        sweep_s, sweep_calls, sweep_records = timed("sweep", Sweep("retention", levels), profile)
        if args.single not in levels:
            raise SystemExit(f"--single {args.single} must be one of --levels")
        measured = [args.single] if args.single_only else list(levels)
        each = [timed(f"single-{v:g}", None, at(v)) for v in measured]
    single_s, single_calls, _ = each[measured.index(args.single)]
    full_s = each[measured.index(1.0)][0] if 1.0 in measured else None
    five_s = sum(e[0] for e in each)
    five_calls = sum(e[1] for e in each)

    def split(records: list[dict]) -> tuple[float, float]:
        """(vision tower s, LLM s) summed over a run's records: vision once per video (levels share it), the
        LLM's prefill + generation per generate call (its rows share it)."""
        vision = {r["video"]: r["timings_s"]["vision"] + r["timings_s"]["decode"] for r in records}
        llm = sum((r["timings_s"]["prefill"] + r["timings_s"]["generation"]) / r["batch_rows"] for r in records)
        return sum(vision.values()), llm

    # the sweep's answers at a level equal that level's own run (greedy, one row per generate call)
    same = all(
        {r["id"].rsplit("@", 1)[0]: r["answer"] for r in sweep_records if r["level"]["retention"] == v}
        == {r["id"]: r["answer"] for r in records}
        for v, (_, _, records) in zip(measured, each, strict=True)
    )
    per_level = {v: [r for r in sweep_records if r["level"]["retention"] == v] for v in levels}
    cpu = os.uname().machine
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    n = len(levels)
    lines = [
        "# Sweep bench: one retention sweep vs single-level runs, real 0.5B architecture, random weights, CPU",
        "",
        f"Command: `{command}`  ",
        f"Machine: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, fp32, "
        f"torch {torch.__version__}. Measured {time.strftime('%Y-%m-%d')}.  ",
        *([f"Note: {args.note}  "] if args.note else []),
        f"{args.videos} videos (copies of `{os.path.relpath(args.video, ROOT)}`), {args.frames} frames each, one "
        f"question, {args.new_tokens} new tokens max, batch size {args.batch_size}, feature cache off; each run "
        f"best of {args.repeats}.",
        "",
        "| run | wall time | vision tower calls | decode + vision | LLM (prefill + generation) "
        f"| vs one single-level run (retention {args.single:g}) |",
        "|---|---|---|---|---|---|",
        f"| sweep, {n} levels ({args.levels}) | {sweep_s:.1f} s | {sweep_calls} | "
        + " | ".join(f"{x:.1f} s" for x in split(sweep_records))
        + f" | {sweep_s / single_s:.2f}x |",
        *[
            f"| single level, retention {v:g} | {e[0]:.1f} s | {e[1]} | "
            + " | ".join(f"{x:.1f} s" for x in split(e[2]))
            + f" | {e[0] / single_s:.2f}x |"
            for v, e in zip(measured, each, strict=True)
        ],
        *(
            []
            if args.single_only
            else [
                f"| {n} single-level runs, one per level | {five_s:.1f} s | {five_calls} | "
                + " | ".join(f"{sum(split(e[2])[i] for e in each):.1f} s" for i in (0, 1))
                + f" | {five_s / single_s:.2f}x |"
            ]
        ),
        "",
        f"The sweep costs {sweep_s / single_s:.2f}x one single-level run at retention {args.single:g}"
        + (f", {sweep_s / full_s:.2f}x the uncompressed run" if full_s else "")
        + ("" if args.single_only else f", and {sweep_s / five_s:.0%} of {n} separate runs")
        + ". Its answers equal each measured level's own run: "
        f"{'yes' if same else 'NO'}.",
        "",
        "| level | visual tokens to the LLM (mean) | prefill (mean) |",
        "|---|---|---|",
        *[
            f"| retention={v:g} | {sum(r['tokens']['final'] for r in rs) / len(rs):.0f} | "
            f"{sum(r['timings_s']['prefill'] for r in rs) / len(rs):.2f} s |"
            for v, rs in per_level.items()
        ],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
