"""Bench where people wait (issue 22), on the REAL llava-onevision-qwen2-0.5b-ov architecture with random weights,
each pair interleaved in one process:

1. float32 vs bfloat16: vision tower per frame, prefill, and the whole ``ask`` (decode + encode + LLM).
2. ``scissor chat``: turn 5's prefill with the KV cache kept across turns vs the whole conversation again, at
   10 % retention and uncompressed.
3. 8 questions about one encoded video (uncompressed) in one ``generate`` call: the video prefix prefilled once
   vs once per question.

    .venv/bin/python bench/bench_speed.py [--frames 8] [--video samples/bigbuckbunny.mp4] [--parts dtype chat shared]

Prints the CPU (model name, avx512_bf16/amx flags), torch's detection (``devices.cpu_bf16_support``) and the load
average beside the numbers. Random weights: timings are the architecture's; answers are gibberish, and the tests'
tiny tokenizer decodes most generated ids to nothing, so the chat's earlier answers are a fixed sentence.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

QUESTIONS = [
    "What is happening in this video?",
    "Describe the video in detail.",
    "What colour is the sky?",
    "How many animals appear?",
    "Where does it take place?",
    "What happens at the end?",
    "Is anyone talking?",
    "What is the mood of the scene?",
]
ANSWER = "A large rabbit walks out of its burrow and stretches in the morning sun."


def answer_ids(vlm, question: str, history: list) -> list[int]:
    """The ids the next turn's prompt spells ANSWER with (then the turn's end), after this turn's prompt: what a model
    whose answer is ANSWER generates."""
    _, this_after = vlm.prompt_ids(question, history)
    _, next_after = vlm.prompt_ids(QUESTIONS[-1], [*history, (question, ANSWER)])
    assert next_after[: len(this_after)] == this_after, "the next prompt must start with this one"
    rest, eos = next_after[len(this_after) :], set(vlm._eos_ids())
    end = next(i for i, t in enumerate(rest) if t in eos)
    return rest[: end + 1]


@contextlib.contextmanager
def forcing(vlm, ids: list[int]):
    """Teacher-forced decoding: generate emits exactly ``ids`` (a logits processor masks every other token)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class Force(LogitsProcessor):
        step = 0

        def __call__(self, input_ids, scores):
            forced = torch.full_like(scores, -float("inf"))
            forced[:, ids[min(self.step, len(ids) - 1)]] = 0
            self.step += 1
            return forced

    original = vlm.hf_model.generate
    vlm.hf_model.generate = functools.partial(original, logits_processor=LogitsProcessorList([Force()]))
    try:
        yield
    finally:
        vlm.hf_model.generate = original


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_line() -> str:
    name, flags = "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    return f"{name}, {os.cpu_count()} cores, flags: {' '.join(shown) or 'none of avx2/avx512/amx'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--video", default=str(ROOT / "samples" / "bigbuckbunny.mp4"))
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--parts", nargs="+", default=["dtype", "chat", "shared"], choices=["dtype", "chat", "shared"])
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs of each pair; the fastest is reported")
    forced_help = ("chat: force each earlier turn's generated ids to spell the fixed answer (a real model's answer "
                   "re-tokenizes to its own ids); without it the cache stops where the answer starts")  # fmt: skip
    ap.add_argument("--forced", action="store_true", help=forced_help)
    args = ap.parse_args()
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - a script, progress on stderr

    import torch
    from bench_gpu import config
    from bench_model import wrap_random
    from transformers import LlavaOnevisionForConditionalGeneration

    from scissor_cli.devices import cpu_bf16_support, dtype_name
    from scissor_cli.model import PromptCache
    from scissor_cli.options import GenerationOptions
    from scissor_cli.scc import compress
    from scissor_cli.video import sample_frames

    native, why = cpu_bf16_support()
    auto = dtype_name("cpu", "auto")
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads  ",
        f"torch's detection: native bf16 {native} ({why}); `--dtype auto` on the CPU picks {auto}  ",
        f"Load average at start: {load()}",
        "",
    ]
    gen = GenerationOptions(max_new_tokens=args.new_tokens)
    torch.manual_seed(0)
    fp32 = wrap_random(LlavaOnevisionForConditionalGeneration(config("0.5b")).eval())
    t = time.perf_counter()
    clip = sample_frames(args.video, n_frames=args.frames)
    decode_s = time.perf_counter() - t
    frames = clip.frames
    models = {"float32": fp32}
    if "dtype" in args.parts or auto == "bfloat16":
        models["bfloat16"] = wrap_random(copy.deepcopy(fp32.hf_model).to(torch.bfloat16))

    encoded = {}
    if "dtype" in args.parts:
        res: dict[str, dict[str, float]] = {name: {} for name in models}
        for name in ("float32", "bfloat16") * args.repeats:  # interleaved
            vlm = models[name]
            t = time.perf_counter()
            encoded[name] = features = vlm.encode(frames)
            vision = time.perf_counter() - t
            out = vlm.generate([(features, QUESTIONS[0])], gen)
            r = res[name]
            for key, value in (("vision", vision), ("prefill", out.prefill_s), ("llm", out.prefill_s +
                               out.generation_s)):  # fmt: skip
                r[key] = min(r.get(key, value), value)
            r["n_prompt"] = out.n_prompt_tokens[0]
            log(f"{name}: vision {vision:.1f} s, prefill {out.prefill_s:.2f} s ({load()})")
        f, b = res["float32"], res["bfloat16"]
        ask = {n: decode_s + r["vision"] + r["llm"] for n, r in res.items()}
        lines += [
            f"**float32 vs bfloat16** ({args.frames} frames, uncompressed, {f['n_prompt']} prompt tokens, "
            f"{args.new_tokens} new tokens max; best of {args.repeats}, interleaved; decode {decode_s:.1f} s counted "
            "in both)",
            "",
            "| | float32 | bfloat16 | speed-up |",
            "|---|---|---|---|",
            f"| vision tower per frame | {f['vision'] / args.frames:.2f} s | {b['vision'] / args.frames:.2f} s "
            f"| {f['vision'] / b['vision']:.2f}x |",
            f"| prefill | {f['prefill']:.2f} s | {b['prefill']:.2f} s | {f['prefill'] / b['prefill']:.2f}x |",
            f"| whole ask | {ask['float32']:.1f} s | {ask['bfloat16']:.1f} s "
            f"| {ask['float32'] / ask['bfloat16']:.2f}x |",
            "",
        ]

    vlm = models[auto]
    features = encoded[auto] if auto in encoded else vlm.encode(frames)
    if "chat" in args.parts:
        lines += [
            f"**chat, turn 5's prefill** ({auto}, {args.frames} frames; earlier answers a fixed 15-word sentence"
            + (", forced as the model's own output" if args.forced else ", not what the model generated")
            + f"; best of {args.repeats}, interleaved)",
            "",
            "| video tokens | prompt tokens | prefilled with the cache | with the cache | without | speed-up "
            "| one decode step | ceiling: without / one step |",
            "|---|---|---|---|---|---|---|---|",
        ]
        uncompressed = features.flatten(0, 1)
        scc = compress(features, tau=0.9, epsilon=0.05, budget=0.1, generator=torch.Generator().manual_seed(0))
        scc = scc.tokens
        for label, tokens in (("10 %", scc), ("uncompressed", uncompressed)):
            cached = full = None
            for _ in range(args.repeats):  # interleaved; the fastest of each (the first pass at a shape warms oneDNN)
                cache, history = PromptCache(), []
                for turn in range(4):
                    if args.forced:  # the model "says" ANSWER: the ids the next prompt spells it with, then eos
                        ids = answer_ids(vlm, QUESTIONS[turn], history)
                        with forcing(vlm, ids):
                            vlm.generate([(tokens, QUESTIONS[turn])], replace(gen, max_new_tokens=len(ids)),
                                         history=history, cache=cache)  # fmt: skip
                    else:
                        vlm.generate([(tokens, QUESTIONS[turn])], gen, history=history, cache=cache)
                    history.append((QUESTIONS[turn], ANSWER))
                c = vlm.generate([(tokens, QUESTIONS[4])], gen, history=history, cache=cache)
                f = vlm.generate([(tokens, QUESTIONS[4])], gen, history=history)
                cached = c if cached is None or c.prefill_s < cached.prefill_s else cached
                full = f if full is None or f.prefill_s < full.prefill_s else full
            speedup = full.prefill_s / cached.prefill_s
            # one forward of one token on the cached context (a decode step): no cache can make a turn cheaper, so
            # without / one step bounds the speed-up any KV cache can give on this machine
            step = min(o.generation_s / max(1, o.n_new_tokens[0] - 1) for o in (cached, full))
            log(f"chat {label}: {cached.prefill_s:.3f} s vs {full.prefill_s:.3f} s, step {step:.3f} s ({load()})")
            lines.append(
                f"| {tokens.shape[0]} ({label}) | {full.n_prompt_tokens[0]} | {cached.n_prefill_tokens[0]} "
                f"| {cached.prefill_s:.3f} s | {full.prefill_s:.2f} s | {speedup:.1f}x | {step:.3f} s "
                f"| {full.prefill_s / step:.1f}x |"
            )
        lines.append("")

    if "shared" in args.parts:
        tokens = features.flatten(0, 1)
        requests = [(tokens, q) for q in QUESTIONS]
        res2 = {}
        for share in (False, True) * args.repeats:
            out = vlm.generate(requests, gen, share_prefix=share)
            best = res2.get(share)
            res2[share] = out if best is None or out.prefill_s < best.prefill_s else best
            log(f"8 questions, share_prefix={share}: prefill {out.prefill_s:.2f} s ({load()})")
        before, after = res2[False], res2[True]
        lines += [
            f"**8 questions about one video** ({auto}, {args.frames} frames uncompressed, one generate call; "
            f"best of {args.repeats}, interleaved)",
            "",
            "| | prefilled tokens | prefill |",
            "|---|---|---|",
            f"| every question prefills the video | {sum(before.n_prefill_tokens)} | {before.prefill_s:.2f} s |",
            f"| the video prefix once | {sum(after.n_prefill_tokens)} | {after.prefill_s:.2f} s |",
            f"| speed-up | | {before.prefill_s / after.prefill_s:.2f}x |",
            "",
        ]
    lines.append(f"Load average at the end: {load()}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
