"""The real Qwen2.5-VL-3B/7B and Qwen3-VL-4B/8B architectures with random weights, and one bench of scissor's Qwen seam
on them (bench_model.py on CPU, bench_gpu.py / gpu_check.py on a GPU).

Shapes from the published config.json files (Qwen/Qwen2.5-VL-3B-Instruct, -7B-Instruct, Qwen/Qwen3-VL-4B-Instruct,
-8B-Instruct; every value below was checked against copies of those files), and the video pixel bounds their
processor files give (``VIDEO_PIXELS``). The tokenizer is the tests' tiny one (the real ones cannot be fetched
offline), so the special ids are moved to its ids (3..6); the text prompt is ~20 tokens either way.

Per architecture, for one clip: vision (preprocess + the vision tower, ``VisionLanguageModel.encode``), SCC at the
budgets, the LLM prefill (one synchronised forward over generate's inputs: ids, M-RoPE positions, vision outputs)
and the decode time per token (a greedy ``generate`` of exactly ``new_tokens``: first token to last), peak memory.
"""

from __future__ import annotations

import time

QWEN_TEXT = {
    "qwen2.5-vl-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                          num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-vl-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                          num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "qwen3-vl-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "qwen3-vl-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False),
}  # fmt: skip
QWEN_VISION = {
    "qwen2.5-vl": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu"),
    "qwen3-vl-4b": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16,
                        spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                        deepstack_visual_indexes=[5, 11, 17], hidden_act="gelu_pytorch_tanh"),
    "qwen3-vl-8b": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                        spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                        deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh"),
}  # fmt: skip
# (min, max) pixels of the published checkpoints' video processor: per frame for Qwen2.5-VL (its files set no video
# bounds, so the processor class's 128x28x28..768x28x28 hold), per clip for Qwen3-VL (video_preprocessor_config.json:
# size shortest_edge 4096, longest_edge 25165824, far above the class's 786432).
VIDEO_PIXELS = {"qwen2.5-vl-3b": (100352, 602112), "qwen2.5-vl-7b": (100352, 602112),
                "qwen3-vl-4b": (4096, 25165824), "qwen3-vl-8b": (4096, 25165824)}  # fmt: skip
IDS = dict(vision_start_token_id=3, vision_end_token_id=4, image_token_id=5, video_token_id=6)
QUESTION = "What is happening in this video?"


def qwen_config(arch: str):
    text = dict(
        QWEN_TEXT[arch],
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )
    tie = text["tie_word_embeddings"]
    if arch.startswith("qwen2.5"):
        from transformers import Qwen2_5_VLConfig

        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
        vision = dict(QWEN_VISION["qwen2.5-vl"], out_hidden_size=text["hidden_size"])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **IDS)
    from transformers import Qwen3VLConfig

    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                               "mrope_interleaved": True}  # fmt: skip
    vision = dict(QWEN_VISION[arch], out_hidden_size=text["hidden_size"])
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **IDS)


def build(arch: str, device, dtype, max_pixels: int | None = None):
    """(VisionLanguageModel on ``device`` in ``dtype``, seconds to build it). ``max_pixels``: the video processor's
    upper bound (default: the published checkpoint's, ``VIDEO_PIXELS``; per frame for Qwen2.5-VL, per clip for
    Qwen3-VL)."""
    import torch
    from tiny_checkpoint import QWEN_VL_CHAT_TEMPLATE, build_tokenizer
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    from scissor_cli.families import QWEN2_5_VL, QWEN3_VL
    from scissor_cli.families.qwen import QwenSettings
    from scissor_cli.model import VisionLanguageModel

    family = QWEN2_5_VL if arch.startswith("qwen2.5") else QWEN3_VL
    cls = Qwen2_5_VLForConditionalGeneration if family is QWEN2_5_VL else Qwen3VLForConditionalGeneration
    config = qwen_config(arch)
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.device(device):  # built in ``dtype`` directly: a float32 build of the 8B would take 33 GB first
        hf = cls._from_config(config, dtype=dtype).eval()
    t_build = time.perf_counter() - t
    _, _, mean, std = family.defaults
    lo, hi = VIDEO_PIXELS[arch]
    v = config.vision_config
    settings = QwenSettings(
        min_pixels=lo, max_pixels=max_pixels or hi, patch=v.patch_size, merge=2, temporal=2, mean=mean, std=std,
        clip_bounds=family.clip_bounds, dim=config.text_config.hidden_size,
        n_deep=len(getattr(v, "deepstack_visual_indexes", None) or ()), video_id=IDS["video_token_id"],
    )  # fmt: skip
    tok = build_tokenizer(chat_template=QWEN_VL_CHAT_TEMPLATE, qwen_vl=True)
    vlm = VisionLanguageModel(hf, tok, name=f"random {arch}", revision=None, layout="hf", newline=False,
                              image_size=None, mean=mean, std=std, family=family, family_settings=settings)  # fmt: skip
    return vlm, t_build


def bench_qwen(arch: str, frames, budgets, device, dtype, new_tokens: int, max_pixels=None, repeats: int = 1):
    """Rows (label, kept, prompt tokens, SCC s, prefill s, decode s/token, total s, peak GiB) and a head line."""
    import resource
    from types import SimpleNamespace

    import torch
    from transformers.generation.streamers import BaseStreamer

    from scissor_cli.options import CompressionOptions, Profile
    from scissor_cli.pipeline import EncodedVideo, compress_video, resolve_profile

    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def peak_gib():
        """Peak memory since the model was built (GPU: allocated; CPU: the process's VmHWM, reset after the build
        where the kernel allows, else the whole process's peak)."""
        if cuda:
            return torch.cuda.max_memory_allocated(dev) / 2**30
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    vlm, t_build = build(arch, dev, dtype, max_pixels)
    try:  # "5": reset the peak resident set size, so the peak column is this bench's, not an earlier model's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    if cuda:
        vlm.encode(frames[:2])  # warm-up
        torch.cuda.reset_peak_memory_stats(dev)
    sync()
    t = time.perf_counter()
    features = vlm.encode(frames)
    sync()
    t_enc = time.perf_counter() - t
    n = len(frames)
    info = SimpleNamespace(fps=30.0, n_frames=n * 30)
    layout = vlm.family.video_layout(vlm, features, list(range(0, n * 30, 30)), info)
    encoded = EncodedVideo(path="synthetic", info=info, indices=tuple(range(n)), timestamps=tuple(float(i) for i in
                           range(n)), note=None, features=features, decode_s=0.0, vision_s=t_enc, cache_hit=False,
                           backend="synthetic", layout=layout)  # fmt: skip
    compressed_at = []
    for label, budget in budgets:
        comp = CompressionOptions(enabled=False) if budget is None else CompressionOptions(retention=budget)
        profile = resolve_profile(None, Profile(compression=comp))
        if budget is not None and cuda:
            compress_video(encoded, profile)  # warm-up
        compressed_at.append((label, compress_video(encoded, profile)))

    def inputs_of(compressed, vlm=vlm):
        return vlm.family.generate_inputs(vlm, [(compressed.tokens, QUESTION)], (), 0)

    # the prefills interleaved: every budget once per round, the fastest round of each reported, so a change of load
    # hits all budgets alike and the ratios compare like with like
    prefill = {label: float("inf") for label, _ in compressed_at}
    with torch.inference_mode():
        for _ in range(repeats):
            for label, compressed in compressed_at:
                inputs, _ = inputs_of(compressed)
                sync()
                t = time.perf_counter()
                vlm.hf_model(**inputs, logits_to_keep=1)
                sync()
                prefill[label] = min(prefill[label], time.perf_counter() - t)

    class FirstToken(BaseStreamer):
        """generate() puts the prompt, then each step's token: the 2nd put is the first generated token."""

        def __init__(self):
            self.n_puts, self.t_first = 0, None

        def put(self, value):
            self.n_puts += 1
            if self.n_puts == 2:
                sync()
                self.t_first = time.perf_counter()

        def end(self):
            pass

    rows = []
    for label, compressed in compressed_at:
        inputs, lengths = inputs_of(compressed)
        streamer = FirstToken()
        with torch.inference_mode():
            sync()
            t = time.perf_counter()
            out = vlm.hf_model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                        do_sample=False, pad_token_id=0, streamer=streamer)  # fmt: skip
            sync()
            t_end = time.perf_counter()
        t_gen = t_end - t
        n_new = out.shape[1] - inputs["input_ids"].shape[1]
        t_prefill = prefill[label]
        # the decode steps alone: from the first generated token to the last (generate's own prefill excluded)
        per_token = (t_end - streamer.t_first) / max(1, n_new - 1)
        k = compressed.n_final
        rows.append((label, f"{k} ({k / compressed.n_original:.0%})", str(lengths[0]),
                     f"{compressed.compression_s:.3f} s", f"{t_prefill:.2f} s", f"{per_token * 1000:.0f} ms",
                     f"{t_enc + compressed.compression_s + t_gen:.1f} s", f"{peak_gib():.1f} GiB"))  # fmt: skip
    grid = layout.grid
    head = (f"{arch}: built in {t_build:.0f} s, {sum(p.numel() for p in vlm.hf_model.parameters()) / 1e9:.2f} B "
            f"params; {n} frames {frames.shape[1]}x{frames.shape[2]} -> {grid[0]} temporal patches of "
            f"{grid[1]}x{grid[2]} tokens; vision {t_enc:.1f} s")  # fmt: skip
    del vlm
    if cuda:
        torch.cuda.empty_cache()
    return head, rows
