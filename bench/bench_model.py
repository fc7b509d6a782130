"""Bench the model seam on the REAL llava-onevision-qwen2-0.5b-ov architecture with random weights (nothing to
download): preprocessing, vision tower, SCC compression, prefill, per-token decode, peak memory; uncompressed vs
retention budgets; and a second question served from the feature cache.

    .venv/bin/python bench/bench_model.py [--frames 8] [--new-tokens 16] [--video samples/bigbuckbunny.mp4]
                                          [--out bench/results_model.md]
    .venv/bin/python bench/bench_model.py --qwen qwen2.5-vl-3b [qwen2.5-vl-7b qwen3-vl-4b qwen3-vl-8b]
                                          [--max-pixels N] [--out bench/results_model_qwen.md]

``--qwen``: the real Qwen2.5-VL-3B/7B and Qwen3-VL-4B/8B architectures instead (bench/qwen_archs.py): vision, SCC,
prefill uncompressed vs 50/35/10 %, per-token decode, peak memory, on the clip's frames at the video processor's
published checkpoints' bounds (``--max-pixels`` lowers them). The prefills of the budgets are interleaved, round by
round; the CPU, its flags and the load average are printed beside the numbers.

Random weights: timings are the architecture's (same shapes, same FLOPs), answers are gibberish. The tokenizer is
the tests' tiny BPE (the Qwen2 one cannot be fetched offline); it only changes the ~20 text tokens of the prompt.
Several minutes on a 2-core CPU: the SigLIP tower costs ~15 s per 384 px frame there.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_checkpoint.build_tokenizer
sys.path.insert(0, str(ROOT / "bench"))  # bench_gpu.config: the real architectures

QUESTION = "What is happening in this video?"
BUDGETS = [("uncompressed", None), ("50 %", 0.5), ("35 %", 0.35), ("10 %", 0.1)]


def rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def wrap_random(hf_model):
    """The randomly initialised real 0.5B architecture as scissor's model seam (llava-hf layout, 384 px, newline)."""
    from tiny_checkpoint import build_tokenizer

    from scissor_cli.model import VisionLanguageModel

    return VisionLanguageModel(
        hf_model,
        build_tokenizer(),
        name="random llava-onevision-qwen2-0.5b-ov architecture",
        revision=None,
        layout="llava-hf",
        newline=True,
        image_size=(384, 384),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--video", default=str(ROOT / "samples" / "bigbuckbunny.mp4"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_model.md"))
    ap.add_argument("--repeats", type=int, default=2, help="LLM runs per row; the fastest is reported")
    ap.add_argument("--note", default="", help="a line about the conditions (e.g. other load) for the results file")
    ap.add_argument("--qwen", nargs="+", default=None, help="Qwen architectures to bench instead (bench/qwen_archs.py)")
    pixels_help = "--qwen: the video processor's max_pixels (default: the published checkpoint's)"
    ap.add_argument("--max-pixels", type=int, default=None, help=pixels_help)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="--qwen: the weights' dtype")
    args = ap.parse_args()
    if args.qwen:
        return main_qwen(args)
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])

    t_import = time.perf_counter()
    import torch
    from bench_gpu import config
    from transformers import LlavaOnevisionForConditionalGeneration

    from scissor_cli.cache import FeatureCache
    from scissor_cli.model import preprocess_frames
    from scissor_cli.options import GenerationOptions
    from scissor_cli.video import sample_frames

    try:
        from scissor_cli.scc import compress
    except ImportError:  # the SCC engine lands separately; without it only the uncompressed rows are measured
        compress = None
    t_import = time.perf_counter() - t_import
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - a script, progress on stderr

    torch.manual_seed(0)
    t = time.perf_counter()
    hf_model = LlavaOnevisionForConditionalGeneration(config("0.5b")).eval()
    t_init = time.perf_counter() - t
    n_params = sum(p.numel() for p in hf_model.parameters()) / 1e6
    log(f"instantiated random 0.5B ({n_params:.1f} M params) in {t_init:.1f} s, peak RSS {rss_gb():.2f} GB")
    vlm = wrap_random(hf_model)
    clip = sample_frames(args.video, n_frames=args.frames)
    frames = clip.frames
    gen = GenerationOptions(max_new_tokens=args.new_tokens)

    rows: list[tuple[str, str, str]] = []  # (step, time, note)
    t = time.perf_counter()
    preprocess_frames(frames, 384)
    t_pre = time.perf_counter() - t
    rows.append(("preprocess (resize + normalise)", f"{t_pre:.2f} s", f"{len(frames)} frames {frames.shape[1:3]}"))

    vision_calls = []
    vlm.hf_model.model.vision_tower.register_forward_hook(lambda *a: vision_calls.append(1))
    t = time.perf_counter()
    features = vlm.encode(frames)  # [F, 196, 896]
    t_enc = time.perf_counter() - t
    log(f"encode {t_enc:.1f} s -> {tuple(features.shape)}")
    rows.append(
        (
            "encode: vision tower + projector + pool",
            f"{t_enc:.1f} s ({t_enc / len(frames):.1f} s/frame)",
            f"-> {tuple(features.shape)}, includes preprocess; peak RSS {rss_gb():.2f} GB",
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(tmp)
        key = "0" * 64
        t = time.perf_counter()
        cache.put(key, features)
        t_put = time.perf_counter() - t

        table = []
        for label, budget in BUDGETS:
            t_comp, n_tok, retention = 0.0, features.shape[0] * features.shape[1], 1.0
            tokens = features.flatten(0, 1)
            if budget is not None:
                if compress is None:
                    table.append((label, "scc.compress not available", "", "", "", "", ""))
                    continue
                t = time.perf_counter()
                res = compress(
                    features, tau=0.9, epsilon=0.05, budget=budget, generator=torch.Generator().manual_seed(0)
                )
                t_comp = time.perf_counter() - t
                tokens, n_tok, retention = res.tokens, res.n_output, res.retention
            # best of --repeats: the CPU is shared, the minimum is the least disturbed measurement
            runs = [vlm.generate([(tokens, QUESTION)], gen) for _ in range(args.repeats)]
            out = min(runs, key=lambda o: o.prefill_s + o.generation_s)
            n_new = out.n_new_tokens[0]
            per_tok = out.generation_s / max(1, n_new - 1)
            log(f"{label}: {n_tok} video tokens, prefill {out.prefill_s:.1f} s, {n_new} new tokens")
            table.append(
                (
                    label,
                    f"{n_tok} ({retention:.0%})",
                    f"{out.n_prompt_tokens[0]}",
                    f"{t_comp:.2f} s",
                    f"{out.prefill_s:.1f} s",
                    f"{per_tok * 1000:.0f} ms ({n_new} tokens)",
                    f"{t_enc + t_comp + out.prefill_s + out.generation_s:.1f} s",
                    f"{rss_gb():.2f} GB",
                )
            )

        tau_only = None
        if compress is not None:
            t = time.perf_counter()
            res = compress(features, tau=0.9, epsilon=0.05, generator=torch.Generator().manual_seed(0))
            tau_only = (res.n_output, res.retention, time.perf_counter() - t)

        # A second question about the same clip: features from the cache, the tower is not run.
        n_calls = len(vision_calls)
        t0 = time.perf_counter()
        cached = cache.get(key)
        t_get = time.perf_counter() - t0
        tokens = cached.flatten(0, 1)
        if compress is not None:
            tokens = compress(cached, tau=0.9, budget=0.1, generator=torch.Generator().manual_seed(0)).tokens
        out2 = vlm.generate([(tokens, "Describe the video in detail.")], gen)
        t_second = time.perf_counter() - t0
        assert len(vision_calls) == n_calls, "the cached question must not run the vision tower"
        cache_bytes = cache.size_bytes()

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        "# Model bench: real llava-onevision-qwen2-0.5b-ov architecture, random weights, CPU",
        "",
        f"Command: `{command}`  ",
        f"Machine: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, fp32, "
        f"torch {torch.__version__}. Measured {time.strftime('%Y-%m-%d')}.  ",
        *([f"Note: {args.note}  "] if args.note else []),
        f"Video: `{os.path.relpath(args.video, ROOT)}`, {len(frames)} frames, 196 tokens/frame; "
        f"{args.new_tokens} new tokens max; LLM rows best of {args.repeats}; "
        f"model instantiation {t_init:.0f} s ({n_params:.1f} M params, not "
        f"counted below); imports {t_import:.1f} s.",
        "",
        "| step | time | note |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        f"| cache put ({cache_bytes / 1e6:.1f} MB safetensors) | {t_put:.2f} s | |",
        "",
        "| video tokens | kept (retention) | prompt tokens | SCC compress | prefill (to 1st token) | decode / token "
        "| question total (encode + compress + LLM) | peak RSS so far |",
        "|---|---|---|---|---|---|---|---|",
        *["| " + " | ".join(r) + " |" for r in table],
        "",
    ]
    if tau_only is not None:
        lines.append(
            f"SCC at tau 0.9 with no budget kept {tau_only[0]} tokens ({tau_only[1]:.1%}) in {tau_only[2]:.2f} s "
            "(random-weight features are not representative of real retention; budgets are met by searching tau)."
        )
    else:
        lines.append("scissor_cli.scc.compress was not importable: only the uncompressed row was measured.")
    lines += [
        "",
        f"**Second question from the feature cache** (10 % budget): cache read {t_get:.2f} s, vision tower calls 0, "
        f"total {t_second:.1f} s (prefill {out2.prefill_s:.1f} s) vs {t_enc:.0f} s of encoding alone the first time.",
        "",
        f"Peak RSS of the whole run: {rss_gb():.2f} GB.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)
    log(f"wrote {args.out}")


def main_qwen(args) -> None:
    """``--qwen``: the Qwen rows, one table per architecture, written to ``--out`` (results_model_qwen.md)."""
    import torch
    from bench_speed import cpu_line, load
    from qwen_archs import QWEN_TEXT, bench_qwen

    from scissor_cli.video import sample_frames

    unknown = sorted(set(args.qwen) - set(QWEN_TEXT))
    if unknown:
        sys.exit(f"unknown --qwen architectures {unknown}; known: {sorted(QWEN_TEXT)}")
    out = (
        args.out
        if args.out != str(ROOT / "bench" / "results_model.md")
        else str(ROOT / "bench" / "results_model_qwen.md")
    )
    frames = sample_frames(args.video, n_frames=args.frames).frames
    lines = [
        "# Model bench: real Qwen2.5-VL / Qwen3-VL architectures, random weights, CPU",
        "",
        f"Command: `python {os.path.relpath(__file__, ROOT)} {' '.join(sys.argv[1:])}`  ",
        f"Machine: {cpu_line()}; torch threads {torch.get_num_threads()}, {args.dtype}, torch "
        f"{torch.__version__}. Measured {time.strftime('%Y-%m-%d')}; load average at start {load()}.  ",
        *([f"Note: {args.note}  "] if args.note else []),
        f"Video: `{os.path.relpath(args.video, ROOT)}`, {len(frames)} frames; {args.new_tokens} new tokens; prefill "
        f"best of {args.repeats} rounds, the budgets interleaved in each round.",
        "",
    ]
    for arch in args.qwen:
        print(f"{arch} ...", file=sys.stderr, flush=True)
        dtype = getattr(torch, args.dtype)
        head, rows = bench_qwen(arch, frames, BUDGETS, "cpu", dtype, args.new_tokens, args.max_pixels, args.repeats)
        gc.collect()  # the model's reference cycles: free its weights before the next architecture is built
        lines += [f"**{head}**", "",
                  "| budget | video tokens kept | prompt tokens | SCC | prefill | decode / token | question total "
                  "(vision + SCC + LLM) | peak RSS |", "|---|---|---|---|---|---|---|---|",
                  *["| " + " | ".join(r) + " |" for r in rows], ""]  # fmt: skip
        uncompressed, ten = rows[0], rows[-1]
        speedup = float(uncompressed[4].split()[0]) / max(1e-9, float(ten[4].split()[0]))
        lines += [f"Prefill at 10 % vs uncompressed: {speedup:.1f}x faster.", ""]
    lines.append(f"Load average at the end: {load()}")
    text = "\n".join(lines)
    print(text)
    Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
