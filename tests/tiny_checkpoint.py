"""Tiny random LLaVA-OneVision checkpoints, built offline in about a second (no network, no torchvision).

Two layouts of the *same* weights (for a given seed):

* ``llava-hf``: what ``llava-hf/llava-onevision-*-hf`` holds (transformers ``save_pretrained`` names,
  ``processor_config.json``, a tokenizer with ``<image>``/``<video>`` tokens and the llava-hf chat template).
* ``llava-next``: the original LLaVA-NeXT / lmms-lab / LLaVA-Scissor layout (``model_type: llava_qwen`` or
  ``llava_qwen_zip``, keys ``model.mm_projector.0.weight``, ``model.vision_tower.vision_tower.vision_model.*``,
  ``model.layers.*``), no processor config, and a Qwen2 tokenizer that lacks ``<image>``/``<video>`` (as in some
  of those checkpoints) with the Qwen2 chat template.

Sizes: SigLIP 98 px / patch 14 -> an odd 7x7 grid (like the real 27x27) -> 16 pooled tokens per frame; vision
hidden 64 with one head (the original layout carries no vision config, the loader infers head_dim 64 from shapes);
Qwen2 hidden 64, 2 layers, vocab 400. ``initializer_range=0.3``: with 0.02 the random LM repeats one token, which
would make greedy-equality tests vacuous.

    python tests/tiny_checkpoint.py OUT_DIR [llava-hf|llava-next]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

IMAGE_SIZE, PATCH = 98, 14
VOCAB_SIZE = 400
MEDIA_TOKENS = ["<image>", "<video>"]
# ids 3..6 in the Qwen-VL tokenizers, as the tiny Qwen configs name them
QWEN_VL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
BASE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "What is happening in this video?",
    "Describe the video in detail.",
    "A person is walking a dog in the park on a sunny day.",
    "The cat jumps onto the table and knocks over a glass of water.",
    "How many people appear in the clip? Answer with a number.",
    "system user assistant You are a helpful assistant.",
    "The car drives down the road, then turns left at the red light.",
    "0 1 2 3 4 5 6 7 8 9 yes no red green blue",
]
# Qwen3-VL's timestamp text, in the Qwen tokenizers' corpus only: the LLaVA tokenizer stays as it was, and with it
# every LLaVA test's prompts and answers (serve's batched-equals-sequential test hit a greedy near-tie otherwise)
QWEN_CORPUS = ["<0.5 seconds> <1.2 seconds> <10.0 seconds>"]

# llava-hf/llava-onevision-* processor chat template: a user turn [video, text] renders "<video>\n{text}".
HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen2-Instruct's template (string content only; a default system turn), as shipped by lmms-lab tokenizers.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(media_tokens: bool = True, chat_template: str = HF_CHAT_TEMPLATE, qwen_vl: bool = False):
    """The tiny byte-level BPE tokenizer (vocab 400; <image>/<video> only with ``media_tokens``; Qwen-VL's vision
    tokens with ``qwen_vl``). Also used by bench/bench_model.py, which has no hub access to fetch the real Qwen2
    tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = BASE_SPECIALS + (QWEN_VL_TOKENS if qwen_vl else MEDIA_TOKENS if media_tokens else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # byte-level: never <unk>
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,  # ids 0..len-1, never split
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*CORPUS, *(QWEN_CORPUS if qwen_vl else [])] * 4, trainer)
    extra = {"image_token": "<image>", "video_token": "<video>"} if media_tokens and not qwen_vl else {}
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens=extra,
        model_max_length=32768,
        padding_side="left",
    )
    hf_tok.chat_template = chat_template
    return hf_tok


def _hf_config(text_heads: int = 4):
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        vision_use_head=False,
        initializer_range=0.3,
    )
    text = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=text_heads,
        num_key_value_heads=max(1, text_heads // 2),
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=2,  # <|im_end|>
        pad_token_id=0,  # <|endoftext|>
        initializer_range=0.3,
    )
    return LlavaOnevisionConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=3,  # <image> in the llava-hf tokenizer
        video_token_index=4,  # <video>
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=[[IMAGE_SIZE * a, IMAGE_SIZE * b] for a in (1, 2) for b in (1, 2)],
        tie_word_embeddings=True,
    )


def _to_original_name(key: str) -> str | None:
    """transformers 5.x in-memory name -> original LLaVA-NeXT name (None: not stored, i.e. the tied lm_head)."""
    rules = [
        ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
        ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
        ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
        ("model.image_newline", "model.image_newline"),
        ("model.language_model.", "model."),
    ]
    if key == "lm_head.weight":
        return None
    for old, new in rules:
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(f"no original name for {key}")


def _original_config(hf_config, zip_tau: float | None, zip_epsilon: float | None) -> dict:
    """A config.json like lmms-lab/llava-onevision-qwen2-*-ov (LlavaQwenConfig = Qwen2Config + mm_* fields)."""
    t = hf_config.text_config
    cfg = {
        "_name_or_path": "lmms-lab/llava-onevision-qwen2-tiny-ov",
        "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava_qwen",
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "max_position_embeddings": t.max_position_embeddings,
        "max_window_layers": t.num_hidden_layers,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": 4096,
        "use_sliding_window": False,
        "tie_word_embeddings": True,
        "vocab_size": t.vocab_size,
        "initializer_range": 0.02,
        "image_token_index": 151646,  # LLaVA-NeXT uses IMAGE_TOKEN_INDEX=-200 in code; this field is not a vocab id
        "image_aspect_ratio": "anyres_max_9",
        "image_crop_resolution": None,
        "image_grid_pinpoints": [list(p) for p in hf_config.image_grid_pinpoints],
        "image_split_resolution": None,
        "mm_hidden_size": hf_config.vision_config.hidden_size,
        "mm_newline_position": "one_token",
        "mm_patch_merge_type": "spatial_unpad",
        "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": None,
        "mm_spatial_pool_mode": "bilinear",
        "mm_spatial_pool_stride": 2,
        "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": "google/siglip-so400m-patch14-384",
        "mm_vision_tower_lr": 2e-06,
        "pos_skipping_range": 4096,
        "tokenizer_model_max_length": 32768,
        "tokenizer_padding_side": "right",
        "torch_dtype": "float32",
        "transformers_version": "4.40.0.dev0",
        "use_cache": True,
        "use_mm_proj": True,
        "use_pos_skipping": False,
        "vision_tower_pretrained": None,
    }
    if zip_tau is not None or zip_epsilon is not None:
        # LLaVA-Scissor baseline checkpoints (HumanMLLM/LLaVA-Scissor): LlavaQwenZipConfig + SCC hyperparameters.
        cfg["architectures"] = ["LlavaQwenZipForCausalLM"]
        cfg["model_type"] = "llava_qwen_zip"
        cfg["mm_zip_tau"] = 0.9 if zip_tau is None else zip_tau
        cfg["mm_zip_epsilon"] = 0.05 if zip_epsilon is None else zip_epsilon
    return cfg


def build_tiny_checkpoint(
    out_dir,
    layout: str = "llava-hf",
    seed: int = 0,
    zip_tau: float | None = None,
    zip_epsilon: float | None = None,
    text_heads: int = 4,
) -> Path:
    """Write a tiny random checkpoint into ``out_dir`` (replaced if it exists) and return its path.

    The same ``seed`` gives the same weights in both layouts, so a llava-next directory is the original-layout
    twin of the llava-hf one. ``zip_tau``/``zip_epsilon`` (llava-next only) make it a LLaVA-Scissor baseline
    (``model_type: llava_qwen_zip`` with ``mm_zip_tau``/``mm_zip_epsilon``). ``text_heads``: the LLM's attention
    heads (head size 64 / heads); vLLM's CPU attention needs a head size of at least 32, so its tier uses 2.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import LlavaOnevisionForConditionalGeneration

    if layout not in ("llava-hf", "llava-next"):
        raise ValueError(f"layout must be 'llava-hf' or 'llava-next', got {layout!r}")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    config = _hf_config(text_heads)
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()

    if layout == "llava-hf":
        model.save_pretrained(out)
        tok = build_tokenizer(media_tokens=True, chat_template=HF_CHAT_TEMPLATE)
        tok.save_pretrained(out)
        norm = {
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "resample": 3,
            "rescale_factor": 1 / 255,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        }
        # transformers 5.x nests the image/video processor configs in processor_config.json; written by hand
        # because LlavaOnevisionProcessor cannot be built without torchvision.
        proc = {
            "processor_class": "LlavaOnevisionProcessor",
            "image_processor": {
                **norm,
                "do_pad": True,
                "image_grid_pinpoints": config.image_grid_pinpoints,
                "image_processor_type": "LlavaOnevisionImageProcessor",
            },
            "video_processor": {
                **norm,
                "do_sample_frames": False,
                "return_metadata": False,
                "video_processor_type": "LlavaOnevisionVideoProcessor",
            },
            "image_token": "<image>",
            "video_token": "<video>",
            "num_image_tokens": (IMAGE_SIZE // PATCH) ** 2,
            "vision_aspect_ratio": "anyres_max_9",
            "vision_feature_select_strategy": "full",
        }
        (out / "processor_config.json").write_text(json.dumps(proc, indent=2))
        return out

    state = {}
    for key, value in model.state_dict().items():
        name = _to_original_name(key)
        if name is not None:
            state[name] = value.detach().clone().contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = _original_config(config, zip_tau, zip_epsilon)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 0, "eos_token_id": [2, 0], "pad_token_id": 0}, indent=2)
    )
    tok = build_tokenizer(media_tokens=False, chat_template=QWEN2_CHAT_TEMPLATE)
    tok.save_pretrained(out)
    return out


# Qwen2-VL's chat template (as Qwen2.5-VL and Qwen3-VL ship it, less tools and image counters).
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _qwen_config(family: str):
    """Tiny Qwen2.5-VL / Qwen3-VL configs: hidden 64, 2-3 layers, mrope_section summing to head_dim / 2 = 8,
    Qwen3-VL's num_position_embeddings a square, two DeepStack levels."""
    text = dict(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, initializer_range=0.3, bos_token_id=None, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=False,
    )  # fmt: skip
    ids = dict(image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        text.update(num_hidden_layers=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                          "mrope_section": [2, 3, 3]})  # fmt: skip
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=56,
                      fullatt_block_indexes=[1], initializer_range=0.3)  # fmt: skip
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    from transformers import Qwen3VLConfig

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    text.update(num_hidden_layers=3, head_dim=16, rope_parameters=rope)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                  deepstack_visual_indexes=[0, 1], initializer_range=0.3)  # fmt: skip
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


# pixel bounds that give a 96x64 clip 15 (Qwen2.5-VL) or 20 (Qwen3-VL, 8 frames) tokens per temporal patch
QWEN_PIXELS = {"qwen2_5_vl": (28 * 28 * 12, 28 * 28 * 24), "qwen3_vl": (32 * 32 * 15 * 8, 32 * 32 * 24 * 8)}


def build_tiny_qwen(out_dir, family: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """A tiny random Qwen2.5-VL (``family`` "qwen2_5_vl") or Qwen3-VL ("qwen3_vl") checkpoint in Hugging Face
    format: save_pretrained weights and config, the tiny tokenizer with Qwen's vision tokens and chat template, and
    a video_preprocessor_config.json (written by hand: the video processors need torchvision)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    if family not in QWEN_PIXELS:
        raise ValueError(f"family must be one of {sorted(QWEN_PIXELS)}, got {family!r}")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = _qwen_config(family)
    torch.manual_seed(seed)
    cls = Qwen2_5_VLForConditionalGeneration if family == "qwen2_5_vl" else Qwen3VLForConditionalGeneration
    cls(config).eval().save_pretrained(out)
    build_tokenizer(chat_template=QWEN_VL_CHAT_TEMPLATE, qwen_vl=True).save_pretrained(out)
    lo, hi = QWEN_PIXELS[family]
    mean = [0.48145466, 0.4578275, 0.40821073] if family == "qwen2_5_vl" else [0.5, 0.5, 0.5]
    std = [0.26862954, 0.26130258, 0.27577711] if family == "qwen2_5_vl" else [0.5, 0.5, 0.5]
    video = {
        "video_processor_type": "Qwen2VLVideoProcessor" if family == "qwen2_5_vl" else "Qwen3VLVideoProcessor",
        "size": {"shortest_edge": lo, "longest_edge": hi},
        "image_mean": mean,
        "image_std": std,
        "patch_size": config.vision_config.patch_size,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "do_sample_frames": False,
    }
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    return out


if __name__ == "__main__":
    path = build_tiny_checkpoint(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "llava-hf")
    print(path, sorted(p.name for p in path.iterdir()))
