"""Bench the LLM step: ``--engine hf`` against ``--engine vllm`` on the same batch (videos x questions, new tokens
each), the two engines interleaved (hf, vllm, hf, vllm, ...), each run in a process of its own: jobs/s, generated
tokens/s, model load (vLLM's engine start included) and the peak resident memory of the run's whole process tree
(scissor's process plus vLLM's engine-core and worker processes).

    .venv-vllm/bin/python bench/bench_engine.py [--arch tiny 0.5b] [--videos 16] [--questions 4]
        [--new-tokens 64] [--frames 8] [--rounds N] [--features tower|synthetic] [--retention R]
        [--out bench/results_engine.md]

Needs vLLM (``make test-vllm`` builds .venv-vllm). Random weights (nothing to download): ``tiny`` is the tests'
checkpoint with 2 LLM heads (vLLM's CPU attention needs a head size >= 32), ``0.5b`` the real
llava-onevision-qwen2-0.5b-ov architecture. Answers are gibberish; greedy, with the checkpoint's own stop tokens
(a row may stop early; the table counts the tokens each engine generated).

What is timed is the LLM step: an untimed warm-up fills the feature cache once per architecture, and every timed
run (each engine, each round) reads every video's features from it (checked: a run that encoded a video stops
the bench). The warm-up runs the vision tower (``--features tower``), or, where the tower is the slow part and the
weights are random anyway, writes seeded random features of the tower's output shape under each video's cache
key (``synthetic``: the 0.5B's SigLIP costs ~15 s per frame on a 2-core CPU, 30 minutes for 16 videos x 8 frames).
Defaults per architecture keep the 0.5B row near 15 minutes on 2 cores: ``tiny``: tower, no budget, 2 rounds;
``0.5b``: synthetic on a CPU (tower on a GPU), ``--retention 0.1`` (a fixed token count per video, so the LLM's
work does not depend on what random features SCC merges), 1 round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_checkpoint, media
sys.path.insert(0, str(ROOT / "bench"))  # bench_gpu.config: the real architectures
QUESTIONS = ["What is happening in this video?", "Describe the video in detail.", "How many people appear?",
             "What color is the car?", "Is it day or night?", "What happens at the end?"]  # fmt: skip
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def tree_rss_bytes(pid: int, field: str = "VmRSS", below_only: bool = False) -> int:
    """Resident memory of ``pid`` and every process below it (Linux /proc); ``VmHWM``: each one's own peak;
    ``below_only``: the processes below ``pid`` only."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        if below_only and p == pid:
            continue
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def build_checkpoint(arch: str, folder: Path) -> Path:
    if arch == "tiny":
        from tiny_checkpoint import build_tiny_checkpoint

        return build_tiny_checkpoint(folder / "tiny", layout="llava-hf", text_heads=2)
    import torch
    from bench_gpu import config
    from tiny_checkpoint import build_tokenizer
    from transformers import LlavaOnevisionForConditionalGeneration

    out = folder / arch
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(config(arch)).to(torch.bfloat16).eval()
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)  # the Qwen2 tokenizer cannot be fetched offline; only the prompt changes
    return out


DEFAULTS = {  # per architecture: (features on a CPU, retention, rounds)
    "tiny": ("tower", None, 2),
    "0.5b": ("synthetic", 0.1, 1),
}


def warm(args: argparse.Namespace) -> None:
    """The untimed warm-up: every video's features into the feature cache, by the vision tower (an hf run of the
    whole batch, one new token each) or as seeded random features of the tower's output shape under each video's
    own cache key (``synthetic``); prints one JSON line."""
    import torch

    from scissor_cli import video as video_io
    from scissor_cli.batch import run_batch
    from scissor_cli.cache import FeatureCache
    from scissor_cli.jobs import jobs_from_paths
    from scissor_cli.model import load_model
    from scissor_cli.pipeline import feature_key
    from scissor_cli.settings import Overrides, resolve

    profile = resolve(Overrides(model=args.model, frames=args.frames, max_new_tokens=1, dtype=args.dtype,
                                device=args.device, offline=True, retention=args.retention))  # fmt: skip
    vlm = load_model(profile.model)
    videos = sorted(str(p) for p in Path(args.videos_dir).iterdir())
    t = time.perf_counter()
    if args.warm == "tower":
        jobs = jobs_from_paths(videos, QUESTIONS[:1])
        run_batch(lambda: vlm, jobs, str(Path(args.scratch) / f"warm-{time.time_ns()}.jsonl"), profile)
    else:
        cache, generator = FeatureCache(), torch.Generator().manual_seed(0)
        for path in videos:
            info = video_io.probe(path)
            indices = video_io.plan_frames(info, n_frames=args.frames).indices
            shape = vlm.family.feature_shape(vlm, len(indices))  # [F, T, D]: what the tower gives
            cache.put(feature_key(cache, vlm, info, indices), torch.randn(shape, generator=generator).to(vlm.dtype))
    print(json.dumps({"features": args.warm, "videos": len(videos), "warm_s": time.perf_counter() - t}))


def child(args: argparse.Namespace) -> None:
    """One engine's run of the whole batch; prints one JSON line."""
    from dataclasses import replace

    from scissor_cli.batch import run_batch
    from scissor_cli.jobs import jobs_from_paths
    from scissor_cli.model import load_model
    from scissor_cli.settings import Overrides, resolve

    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_rss_bytes(os.getpid()))

    threading.Thread(target=sample, daemon=True).start()
    profile = resolve(Overrides(model=args.model, frames=args.frames, max_new_tokens=args.new_tokens,
                                dtype=args.dtype, device=args.device, offline=True, engine=args.engine,
                                retention=args.retention))  # fmt: skip
    t = time.perf_counter()
    vlm = load_model(profile.model)
    load_s = time.perf_counter() - t
    if args.load_only:  # weights once: each process's own peak (VmHWM: ru_maxrss would carry the parent's over exec)
        done.set()
        me = os.getpid()
        own, others = tree_rss_bytes(me, "VmHWM") - tree_rss_bytes(me, "VmHWM", True), tree_rss_bytes(me, "VmHWM", True)
        held = sum(t.numel() * t.element_size() for t in vlm.hf_model.parameters())  # tied weights counted once
        print(json.dumps({"engine": args.engine, "load_s": load_s, "scissor_peak_gb": own / 1024**3,
                          "tree_gb": others / 1024**3, "weights_gb": held / 1024**3}))  # fmt: skip
        if args.engine == "vllm":
            vlm.engine.close()
        return
    n_new = []
    generate = vlm.generate

    def counting(*a, **k):
        out = generate(*a, **k)
        n_new.extend(out.n_new_tokens)
        return out

    vlm.generate = counting
    jobs = jobs_from_paths([args.videos_dir], QUESTIONS[: args.questions])
    out = Path(args.scratch) / f"{args.engine}-{time.time_ns()}.jsonl"
    t = time.perf_counter()
    run_batch(lambda: vlm, jobs, str(out), replace(profile), batch_size=args.batch_size)
    wall = time.perf_counter() - t
    done.set()
    peak[0] = max(peak[0], tree_rss_bytes(os.getpid()))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ok = sum(r["status"] == "ok" for r in records)
    encoded = sorted({r["video"] for r in records if r["status"] == "ok" and not r.get("cache_hit")})
    print(json.dumps({"engine": args.engine, "jobs": len(jobs), "ok": ok, "wall_s": wall, "load_s": load_s,
                      "new_tokens": sum(n_new), "peak_rss_gb": peak[0] / 1024**3,
                      "encoded": encoded}))  # fmt: skip
    if args.engine == "vllm":
        vlm.engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["tiny", "0.5b"], choices=["tiny", "0.5b"])
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, help="hf, vllm pairs per architecture (default: tiny 2, 0.5b 1)")
    ap.add_argument("--features", choices=["tower", "synthetic"],
                    help="how the untimed warm-up fills the feature cache (default: tiny tower; 0.5b synthetic on "
                    "a CPU, tower on a GPU)")  # fmt: skip
    ap.add_argument("--retention", type=float, help="SCC's budget (default: tiny none, 0.5b 0.1)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (bench/gpu_check.py)")
    ap.add_argument("--load-only", action="store_true", help="only load each engine's model: its memory, no batch")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_engine.md"))
    ap.add_argument("--note", default="", help="a line about the conditions (e.g. other load) for the results file")
    # the child's own arguments (internal)
    for name in ("--engine", "--model", "--videos-dir", "--scratch", "--dtype", "--warm"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.warm:
        return warm(args)
    if args.engine:
        return child(args)

    from media import pattern_clip

    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *(a if " " not in a else repr(a)
                                                                       for a in sys.argv[1:])])  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    videos = scratch / "videos"
    videos.mkdir()
    for i in range(args.videos):
        pattern_clip(videos / f"clip{i:02d}.mp4", seconds=1.0 + 0.25 * i)
    env = {**os.environ, **VLLM_ENV, "SCISSOR_CACHE_DIR": str(scratch / "cache"), "HF_HUB_OFFLINE": "1"}
    rows, warmups = [], []
    for arch in args.arch:
        model = build_checkpoint(arch, scratch)
        dtype = "float32" if arch == "tiny" and args.device == "cpu" else "bfloat16"
        features, retention, rounds = DEFAULTS[arch]
        features = args.features or (features if args.device == "cpu" else "tower")
        retention = args.retention if args.retention is not None else retention
        rounds = args.rounds or rounds
        base = [sys.executable, __file__, "--model", str(model), "--videos-dir", str(videos), "--scratch",
                str(scratch), "--dtype", dtype, "--frames", str(args.frames), "--new-tokens", str(args.new_tokens),
                "--questions", str(args.questions), "--batch-size", str(args.batch_size), "--device",
                args.device, *(["--retention", str(retention)] if retention is not None else [])]  # fmt: skip
        if args.load_only:
            for engine in ("hf", "vllm"):
                out = subprocess.run([*base, "--load-only", "--engine", engine], env=env, check=True,
                                     capture_output=True, text=True)  # fmt: skip
                result = {**json.loads(out.stdout.strip().splitlines()[-1]), "arch": arch}
                rows.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
            continue
        # one untimed pass fills the feature cache; every timed run below reads it (the vision side is the same
        # for both engines, and the 0.5B's tower alone would take longer than the whole comparison)
        out = subprocess.run([*base, "--warm", features], env=env, check=True, capture_output=True, text=True)
        warmup = {**json.loads(out.stdout.strip().splitlines()[-1]), "arch": arch, "retention": retention}
        warmups.append(warmup)
        print(json.dumps(warmup), file=sys.stderr, flush=True)
        for r in range(rounds):
            for engine in ("hf", "vllm"):
                out = subprocess.run([*base, "--engine", engine], env=env, check=True, capture_output=True, text=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                if result["encoded"]:
                    sys.exit(f"bench_engine: the {engine} run encoded {len(result['encoded'])} video(s) instead of "
                             "reading the feature cache: its time is not the LLM step's alone")  # fmt: skip
                result.update(arch=arch, round=r + 1)
                rows.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    lines = [
        "# Engine bench: `--engine hf` vs `--engine vllm`, random weights, CPU",
        "",
        f"`{command}` on {cpu}, {os.cpu_count()} cores; {args.videos} videos x {args.questions} questions, "
        f"{args.new_tokens} new tokens at most, {args.frames} frames, batch size {args.batch_size}; runs "
        "interleaved, each in its own process. Peak RSS: scissor's process and vLLM's processes together.",
    ]
    for w in warmups:
        how = ("the vision tower, run once," if w["features"] == "tower" else
               "seeded random features of the tower's output shape (the tower never ran)")  # fmt: skip
        budget = f"retention {w['retention']}" if w["retention"] is not None else "no budget"
        lines += ["", f"{w['arch']}: before the timed runs, {how} filled the feature cache ({w['videos']} videos, "
                  f"{w['warm_s']:.1f} s, untimed); every timed run read every video's features from it, so wall s "
                  f"is SCC ({budget}), prompt building and the engine's LLM step."]  # fmt: skip
    if args.note:
        lines += ["", args.note]
    if args.load_only:
        lines += ["", "| arch | engine | load s | weights in scissor's process GB | scissor's process, peak RSS GB | "
                  "vLLM's processes, peak RSS GB |", "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['arch']} | {r['engine']} | {r['load_s']:.1f} | {r['weights_gb']:.2f} | "
                  f"{r['scissor_peak_gb']:.2f} | {r['tree_gb']:.2f} |" for r in rows]  # fmt: skip
        Path(args.out).write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    header = "| arch | round | engine | jobs ok | wall s | jobs/s | new tokens | tokens/s | load s | peak RSS GB |"
    lines += ["", header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['round']} | {r['engine']} | {r['ok']}/{r['jobs']} | {r['wall_s']:.1f} | "
                     f"{r['ok'] / r['wall_s']:.2f} | {r['new_tokens']} | {r['new_tokens'] / r['wall_s']:.1f} | "
                     f"{r['load_s']:.1f} | {r['peak_rss_gb']:.2f} |")  # fmt: skip
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
