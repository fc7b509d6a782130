"""Bench the LLM step: ``--engine hf`` against ``--engine vllm`` on the same batch (videos x questions, new tokens
each), the two engines interleaved (hf, vllm, hf, vllm, ...), each run in a process of its own: jobs/s, generated
tokens/s, model load (vLLM's engine start included) and the peak resident memory of the run's whole process tree
(scissor's process plus vLLM's engine-core and worker processes).

    .venv-vllm/bin/python bench/bench_engine.py [--arch tiny 0.5b] [--videos 16] [--questions 4]
        [--new-tokens 64] [--frames 8] [--rounds 2] [--out bench/results_engine.md]

Needs vLLM (``make test-vllm`` builds .venv-vllm). Random weights (nothing to download): ``tiny`` is the tests'
checkpoint with 2 LLM heads (vLLM's CPU attention needs a head size >= 32), ``0.5b`` the real
llava-onevision-qwen2-0.5b-ov architecture (its vision tower costs ~15 s per frame on a 2-core CPU, so one
untimed warm-up run fills the feature cache and the timed runs read it). Answers are gibberish; greedy, with
the checkpoint's own stop tokens (a row may stop early; the table counts the tokens each engine generated).
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
                                dtype=args.dtype, device=args.device, offline=True, engine=args.engine))  # fmt: skip
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
    print(json.dumps({"engine": args.engine, "jobs": len(jobs), "ok": ok, "wall_s": wall, "load_s": load_s,
                      "new_tokens": sum(n_new), "peak_rss_gb": peak[0] / 1024**3}))  # fmt: skip
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
    ap.add_argument("--rounds", type=int, default=2, help="hf, vllm pairs per architecture")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (bench/gpu_check.py)")
    ap.add_argument("--load-only", action="store_true", help="only load each engine's model: its memory, no batch")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_engine.md"))
    ap.add_argument("--note", default="", help="a line about the conditions (e.g. other load) for the results file")
    # the child's own arguments (internal)
    for name in ("--engine", "--model", "--videos-dir", "--scratch", "--dtype"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    args = ap.parse_args()
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
    rows = []
    for arch in args.arch:
        model = build_checkpoint(arch, scratch)
        dtype = "float32" if arch == "tiny" and args.device == "cpu" else "bfloat16"
        base = [sys.executable, __file__, "--model", str(model), "--videos-dir", str(videos), "--scratch",
                str(scratch), "--dtype", dtype, "--frames", str(args.frames), "--new-tokens", str(args.new_tokens),
                "--questions", str(args.questions), "--batch-size", str(args.batch_size), "--device",
                args.device]  # fmt: skip
        if args.load_only:
            for engine in ("hf", "vllm"):
                out = subprocess.run([*base, "--load-only", "--engine", engine], env=env, check=True,
                                     capture_output=True, text=True)  # fmt: skip
                result = {**json.loads(out.stdout.strip().splitlines()[-1]), "arch": arch}
                rows.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
            continue
        if arch != "tiny":  # fill the feature cache: the vision tower is the same for both engines
            subprocess.run([*base, "--engine", "hf", "--new-tokens", "1"], env=env, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
        for r in range(args.rounds):
            for engine in ("hf", "vllm"):
                out = subprocess.run([*base, "--engine", engine], env=env, check=True, capture_output=True, text=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
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
