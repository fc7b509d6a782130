"""GPU (or CPU) bench of the model seam on the REAL LLaVA-OneVision architectures (0.5B, 7B), and Qwen2.5-VL-3B/7B,
Qwen3-VL-4B/8B (bench/qwen_archs.py), random weights.

usage: python bench/bench_gpu.py [--arch 0.5b 7b qwen2.5-vl-3b ...] [--frames 32] [--dtype bfloat16]
                                 [--new-tokens 32] [--device cuda]

Check that it runs without a GPU (slow; small): python bench/bench_gpu.py --device cpu --dtype float32 --arch 0.5b
--frames 2 --new-tokens 4

Per architecture: the model is built directly on the GPU from its config (random weights; nothing to download),
then for one clip of ``--frames`` synthetic 720p frames: preprocessing + vision tower + projector + pooling
(``VisionLanguageModel.encode``), SCC (``scc.compress``: tau 0.9 and the paper's budgets), LLM prefill (one
synchronised forward over the spliced prompt) and decode time per token (a greedy ``generate`` of exactly
``--new-tokens`` tokens, minus the prefill), and peak GPU memory (peak RSS on CPU). Random weights give the real
shapes and FLOPs, not real answers or real retention at a fixed tau: budgets are what make the rows comparable.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tiny_checkpoint.build_tokenizer: the Qwen2 tokenizer cannot be fetched
sys.path.insert(0, str(ROOT / "bench"))  # qwen_archs

from qwen_archs import QWEN_TEXT  # noqa: E402 - after the path

QUESTION = "What is happening in this video?"
BUDGETS = [("uncompressed", None), ("50 %", 0.5), ("35 %", 0.35), ("10 %", 0.1), ("5 %", 0.05)]
TEXT = {  # Qwen2-{0.5B,7B}-Instruct
    "0.5b": dict(
        vocab_size=152000,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        vocab_size=152128,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),
}


def config(arch: str):
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=26,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
        vision_use_head=False,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )
    text = Qwen2Config(
        **TEXT[arch],
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        bos_token_id=151643,
        eos_token_id=151645,
    )
    return LlavaOnevisionConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=151646,
        video_token_index=151647,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=TEXT[arch]["tie_word_embeddings"],
    )


def synthetic_frames(n: int):
    """Smooth synthetic frames (a few moving blobs), 720p like the sample clip: uint8 [n, 720, 1280, 3]."""
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:720, 0:1280]
    return np.stack(
        [
            (
                127
                + 60 * np.sin((xx + 9 * k) / 97.0)[..., None] * np.cos((yy - 5 * k) / 71.0)[..., None]
                + rng.integers(0, 8, (720, 1280, 3))
            )
            .clip(0, 255)
            .astype(np.uint8)
            for k in range(n)
        ]
    )


def bench_qwen_arch(arch: str, args) -> list[str]:
    """The Qwen rows (bench/qwen_archs.py) in this table's columns."""
    import torch
    from qwen_archs import bench_qwen

    head, rows = bench_qwen(arch, synthetic_frames(args.frames), [b for b in BUDGETS if b[1] != 0.05], args.device,
                            getattr(torch, args.dtype), args.new_tokens)  # fmt: skip
    from scissor_cli.pipeline import llm_tflops

    t = QWEN_TEXT[arch]
    dims = (t["num_hidden_layers"], t["hidden_size"], t["intermediate_size"])

    def tflops(kept: str) -> str:  # "k (x%)" -> the paper's prefill estimate for k visual tokens
        return f"{llm_tflops(dims[0], int(kept.split()[0]), dims[1], dims[2]):.2f}"

    return [head, *(f"| {arch} | {r[0]} | {r[1]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | {tflops(r[1])} | {r[7]} |"
                    for r in rows)]  # fmt: skip


def bench(arch: str, args) -> list[str]:
    import torch
    from tiny_checkpoint import build_tokenizer
    from transformers import LlavaOnevisionForConditionalGeneration

    from scissor_cli.model import VisionLanguageModel
    from scissor_cli.options import GenerationOptions
    from scissor_cli.pipeline import llm_tflops
    from scissor_cli.scc import compress

    dtype = getattr(torch, args.dtype)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def peak_gib() -> float:
        if cuda:
            return torch.cuda.max_memory_allocated(dev) / 2**30
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # RSS, KiB on Linux

    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.device(dev):
        hf = LlavaOnevisionForConditionalGeneration(config(arch)).to(dtype).eval()
    sync()
    t_build = time.perf_counter() - t
    vlm = VisionLanguageModel(
        hf,
        build_tokenizer(),
        name=f"random {arch}",
        revision=None,
        layout="llava-hf",
        newline=True,
        image_size=(384, 384),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    frames = synthetic_frames(args.frames)
    vlm.encode(frames[:2])  # warm-up
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t = time.perf_counter()
    features = vlm.encode(frames)
    sync()
    t_enc = time.perf_counter() - t
    gen = GenerationOptions(max_new_tokens=args.new_tokens)
    mem_model = sum(p.numel() * p.element_size() for p in hf.parameters()) / 2**30

    rows = []
    for label, budget in BUDGETS:
        t_comp = 0.0
        tokens = features.flatten(0, 1)
        if budget is not None:
            compress(features, tau=0.9, budget=budget, generator=torch.Generator(dev).manual_seed(0))  # warm-up
            sync()
            t = time.perf_counter()
            res = compress(features, tau=0.9, budget=budget, generator=torch.Generator(dev).manual_seed(0))
            sync()
            t_comp = time.perf_counter() - t
            tokens = res.tokens
        embeds = vlm.embed_request(tokens, QUESTION)[None]
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=dev)
        with torch.inference_mode():
            hf(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=1)  # warm-up
            sync()
            t = time.perf_counter()
            hf(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=1, use_cache=True)
            sync()
            t_prefill = time.perf_counter() - t
            t = time.perf_counter()
            out = hf.generate(
                inputs_embeds=embeds,
                attention_mask=mask,
                max_new_tokens=gen.max_new_tokens,
                min_new_tokens=gen.max_new_tokens,
                do_sample=False,
            )
            sync()
            t_gen = time.perf_counter() - t
        n_new = out.shape[1]
        per_token = (t_gen - t_prefill) / max(1, n_new - 1)
        k = tokens.shape[0]
        rows.append(
            f"| {arch} | {label} | {k} ({k / features.shape[0] / features.shape[1]:.0%}) | "
            f"{t_comp * 1000:.1f} ms | {t_prefill * 1000:.0f} ms | {per_token * 1000:.1f} ms | "
            f"{t_enc + t_comp + t_gen:.2f} s | "
            f"{llm_tflops(vlm.n_layers, k, vlm.hidden_size, vlm.ffn_size):.2f} | "
            f"{peak_gib():.1f} GiB |"
        )
    head = (
        f"**{arch}**: built on {args.device} in {t_build:.1f} s, weights {mem_model:.1f} GiB; encode {args.frames} "
        f"frames (preprocess + SigLIP + projector + pool) {t_enc * 1000:.0f} ms "
        f"({t_enc / args.frames * 1000:.1f} ms/frame) -> {tuple(features.shape)}"
    )
    del hf, vlm, features
    if cuda:
        torch.cuda.empty_cache()
    return [head, *rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["0.5b", "7b"], choices=sorted(TEXT) + sorted(QWEN_TEXT))
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (to check the script, slowly)")
    args = ap.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run with --device cpu --dtype float32 to check the script")
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    notes, table = [], []
    for arch in args.arch:
        head, *rows = bench_qwen_arch(arch, args) if arch in QWEN_TEXT else bench(arch, args)
        notes.append(head)
        table += rows
    print(
        f"{where}, torch {torch.__version__}, {args.dtype}, {args.frames} frames, "
        f"{args.new_tokens} new tokens (greedy), random weights\n"
    )
    print("\n".join(f"- {n}" for n in notes) + "\n")
    print(
        "| model | budget | visual tokens kept | SCC | prefill | decode / token | question total "
        "(encode + SCC + LLM) | est. prefill TFLOPs | peak memory (GPU; RSS on CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
