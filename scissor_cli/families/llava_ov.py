"""LLaVA-OneVision (llava-hf and the original LLaVA-NeXT layout, the LLaVA-Scissor baselines): SigLIP -> projector
-> 2x2 bilinear pooling, 196 tokens per frame at 384 px, 1-D RoPE. Kept tokens are spliced into the prompt's
embeddings (``VisionLanguageModel.embed_request``); positions follow from the attention mask, so either engine
(``engines``: hf, vllm) runs its LLM.
"""

from __future__ import annotations

import math
from pathlib import Path

from scissor_cli.families.base import Family

FRAMES_PER_CHUNK = 8  # vision tower batch: bounds activation memory (27x27 patches x 1152 x 26 layers per frame)


class LlavaOneVision(Family):
    def tokens_per_frame(self, config) -> int:
        side = config.vision_config.image_size // config.vision_config.patch_size
        return math.ceil(side / 2) ** 2  # 2x2 bilinear pooling: 27x27 -> 14x14 = 196

    def load(self, opts, model_dir, raw, status):
        """The checkpoint in ``model_dir`` (either layout): (hf_model, tokenizer, ``VisionLanguageModel``'s keyword
        arguments). Raises ModelError. With ``--engine vllm``, vLLM is started first on the language model's weights
        and only the vision half is loaded here (``engines.weights``); its engine is in the keyword arguments."""
        from scissor_cli.checkpoint import (
            NEXT_KEY_MAPPING,
            _check_config_shapes,
            _check_loading_info,
            _fetch_pickles,
            _next_config,
            _processor_settings,
            _tensor_shapes,
            _weight_files,
            _zip_setting,
            detect_layout,
        )
        from scissor_cli.devices import resolve_device, resolve_dtype
        from scissor_cli.errors import ModelError
        from scissor_cli.families.loading import _quiet_transformers, device_map_for, from_pretrained, load_tokenizer

        name, revision = opts.model, opts.revision
        layout = detect_layout(raw)
        try:
            files, is_safetensors = _weight_files(model_dir, name, opts.allow_pickle)
        except ModelError:
            if not (opts.allow_pickle and model_dir != Path(name).expanduser()):
                raise
            model_dir = _fetch_pickles(name, revision, opts.offline)
            files, is_safetensors = _weight_files(model_dir, name, opts.allow_pickle)

        from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

        device = resolve_device(opts.device)
        dtype = resolve_dtype(opts.dtype, device)
        shapes = _tensor_shapes(files, is_safetensors, name)
        if layout == "llava-hf":
            try:
                with _quiet_transformers():
                    config = LlavaOnevisionConfig.from_pretrained(str(model_dir))
            except (OSError, ValueError, TypeError, KeyError) as e:  # a field of the wrong type or value
                raise ModelError(
                    f"model {name}: its config.json is not a LLaVA-OneVision config: {type(e).__name__}: {e}",
                    hint="re-download the checkpoint or fix config.json",
                ) from e
            key_mapping = None
            newline_default = True
        else:
            with _quiet_transformers():  # Qwen2Config's rope_scaling=None deprecation warning
                config = _next_config(raw, shapes, name)
            key_mapping = NEXT_KEY_MAPPING
            newline_default = False  # LLaVA-NeXT video ("flat", as the LLaVA-Scissor baselines were trained)
        _check_config_shapes(config, shapes, name, layout)
        newline = newline_default if opts.newline is None else opts.newline

        tokenizer = load_tokenizer(model_dir, name, revision)
        if layout == "llava-next":
            vocab = tokenizer.get_vocab()
            for attr, token in (("image_token_index", "<image>"), ("video_token_index", "<video>")):
                if token in vocab:
                    setattr(config, attr, vocab[token])

        engine = None
        if opts.engine == "vllm":  # first: on a GPU, vLLM sizes its KV cache from the memory still free
            from scissor_cli.engines import vllm, weights

            status(f"starting vLLM with {name}'s language model")
            engine = vllm.start(model_dir, config.text_config.to_dict(), str(dtype).removeprefix("torch."), opts, name)
            n_layers = weights.vision_only(config)  # scissor's half: vision tower, projector, embedding table
        device_map = device_map_for(opts, device)
        status(f"loading {name} ({layout} layout) on {device} as {str(dtype).removeprefix('torch.')}")
        hf_model, info = from_pretrained(
            LlavaOnevisionForConditionalGeneration, model_dir, name, layout, "LLaVA-OneVision",
            config=config, dtype=dtype, device_map=device_map, key_mapping=key_mapping,
            use_safetensors=is_safetensors,
        )  # fmt: skip
        if engine is not None:
            info = weights.drop_llm_keys(info)
            hf_model.config.text_config.num_hidden_layers = n_layers  # what the LLM has (the FLOPs estimate reads it)
        _check_loading_info(info, config, name, layout)
        if device_map is None:
            hf_model.to(device)
        hf_model.eval()

        hw, mean, std = _processor_settings(model_dir, config.vision_config.image_size)
        return (
            hf_model,
            tokenizer,
            dict(
                name=name,
                revision=revision,
                layout=layout,
                newline=newline,
                image_size=hw,
                mean=mean,
                std=std,
                default_tau=_zip_setting(raw, "mm_zip_tau", name),
                default_epsilon=_zip_setting(raw, "mm_zip_epsilon", name),
                model_dir=model_dir,
                engine=engine,  # None: the hf engine
            ),
        )

    def encode(self, vlm, frames, on_progress, resized):
        """What ``get_video_features`` computes without its trailing image_newline, FRAMES_PER_CHUNK frames at a
        time: [F, T, D] on ``vlm.device`` in ``vlm.dtype``."""
        import torch

        from scissor_cli.families import pixels as px

        n_frames = resized.shape[0] if resized is not None else frames.shape[0]
        chunks = []
        with torch.inference_mode():
            for start in range(0, n_frames, FRAMES_PER_CHUNK):
                if vlm.on_step is not None:
                    vlm.on_step()
                if resized is not None:
                    part = torch.from_numpy(resized[start : start + FRAMES_PER_CHUNK])
                    pixels = px.normalize_frames(part, vlm.mean, vlm.std)
                else:
                    pixels = px.preprocess_frames(
                        frames[start : start + FRAMES_PER_CHUNK], vlm.image_size, vlm.mean, vlm.std
                    )
                pixels = pixels.to(vlm.device, vlm.dtype)[None]  # [1, f, 3, S, S]
                pooled = vlm.hf_model.model.get_video_features(pixels).pooler_output  # [1, f*T + 1, D]
                chunks.append(pooled[0, :-1].reshape(pixels.shape[1], -1, pooled.shape[-1]))  # [f, T, D]
                if on_progress is not None:
                    on_progress(min(start + FRAMES_PER_CHUNK, n_frames), n_frames)
        return torch.cat(chunks, 0).to(vlm.device)
