"""Qwen2.5-VL and Qwen3-VL video through transformers' own classes, with SCC between the vision tower and the LLM.

* Frames: ``qwen_preprocess`` (no torchvision), one vision call per clip. Two frames make one temporal patch; a
  temporal patch is SCC's "frame", a grid of (H/28)x(W/28) tokens (Qwen3-VL: /32) whose size depends on the video.
  Features are cached as [T', H', W', D] (Qwen3-VL: [T', H', W', D x (1 + DeepStack levels)], the DeepStack
  features after the main ones; they ride through SCC with the main features' assignment, ``scc.compress(carry=)``).
* Positions (M-RoPE): the model's own ``get_rope_index`` on the *uncompressed* prompt (every video placeholder),
  then the columns of the text and of the kept tokens, each kept token at its representative's column
  (``CompressionResult.representative``), in ascending representative order. So with compression off the prompt,
  the positions and the vision outputs are transformers' own; with it, kept tokens keep their original positions
  (as vLLM's EVS does) and causal order follows position order.
* ``generate(input_ids, attention_mask, position_ids=<4 rows: text, t, h, w>, mm_encoder_outputs={"video": ...})``:
  ``inputs_embeds`` would drop DeepStack, and without explicit positions generate falls back to 1-D ones.
* Qwen3-VL's prompt carries ``<t seconds>`` before each temporal patch's ``<|vision_start|>...<|vision_end|>``
  (the mean time of its two frames, from the frame indices and the video's fps, as its processor computes it); a
  temporal patch left with no token keeps its text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scissor_cli.errors import ModelError
from scissor_cli.families.base import Family

WRAPPER = "<|vision_start|><|video_pad|><|vision_end|>"  # what Qwen chat templates render for a video
VISION_START, VIDEO_PAD, VISION_END = "<|vision_start|>", "<|video_pad|>", "<|vision_end|>"


@dataclass(frozen=True)
class QwenSettings:
    """A loaded checkpoint's video preprocessing (from its processor files, else the processor class defaults)."""

    min_pixels: int
    max_pixels: int
    patch: int
    merge: int
    temporal: int
    mean: tuple
    std: tuple
    clip_bounds: bool  # Qwen3-VL: min/max pixels bound frames x height x width, not each frame
    dim: int  # D: the LLM's hidden size (the main features' width)
    n_deep: int  # DeepStack levels (Qwen3-VL), 0 for Qwen2.5-VL
    video_id: int

    # What ``video_limits.ModelInput.sizer`` asks (the decoder's target size and the memory estimate)
    def frame_size(self, n_frames: int, height: int, width: int) -> tuple[int, int]:
        """(height, width) the processor resizes ``n_frames`` frames of this size to (ValueError: an aspect ratio
        over 200, which Qwen's processors refuse)."""
        from scissor_cli.families.qwen_preprocess import smart_resize, smart_resize_clip

        factor = self.patch * self.merge
        if self.clip_bounds:
            return smart_resize_clip(n_frames, height, width, self.temporal, factor, self.min_pixels, self.max_pixels)
        return smart_resize(height, width, factor, self.min_pixels, self.max_pixels)

    def n_tokens(self, n_frames: int, height: int, width: int) -> int:
        """Visual tokens of such a clip: temporal patches x (H/28) x (W/28) (Qwen3-VL: /32)."""
        h, w = self.frame_size(n_frames, height, width)
        factor = self.patch * self.merge
        return -(-n_frames // self.temporal) * (h // factor) * (w // factor)

    @property
    def feature_width(self) -> int:
        return self.dim * (1 + self.n_deep)  # the main features, then each DeepStack level's


@dataclass(frozen=True)
class QwenVideo:
    """An encoded video's layout: its token grid and what the prompt and positions derive from its frames."""

    grid: tuple[int, int, int]  # (T', H', W'): temporal patches, token rows and columns (after the 2x2 merge)
    dim: int
    n_deep: int
    merge: int
    second_per_grid: float | None  # Qwen2.5-VL: seconds per temporal patch (temporal patch size / sampled fps)
    times: tuple[float, ...] | None  # Qwen3-VL: each temporal patch's mean frame time, seconds

    @property
    def n_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    def scc_input(self, features):
        """[T', H', W', D(1+L)] -> (SCC's [T', H'W', D], DeepStack [T', H'W', L*D] or None)."""
        t, h, w = self.grid
        flat = features.reshape(t, h * w, features.shape[-1])
        return flat[..., : self.dim], (flat[..., self.dim :] if self.n_deep else None)

    def kept(self, out, features) -> QwenTokens:
        """The kept tokens of SCC's result ``out`` (None: every token, in order)."""
        import torch

        main, deep = self.scc_input(features)
        if out is None:
            rep = torch.arange(self.n_tokens, device=features.device)
            return QwenTokens(main.reshape(-1, self.dim), None if deep is None else deep.reshape(self.n_tokens, -1),
                              rep, self)  # fmt: skip
        return QwenTokens(out.tokens, out.carried, out.representative, self)


@dataclass(frozen=True, eq=False)
class QwenTokens:
    """What ``generate`` takes for one Qwen video: the kept tokens [M, D], their DeepStack features [M, L*D] (or
    None), each one's representative (index into the T'*H'*W' grid, ascending) and the video's layout. Compared by
    identity, like a tensor (a chat's KV cache names the video by the object)."""

    tokens: Any
    deepstack: Any
    representative: Any
    video: QwenVideo

    @property
    def shape(self):
        return self.tokens.shape


class QwenFamily(Family):
    """Shared by Qwen2.5-VL and Qwen3-VL; the subclasses name their classes and prompt layout."""

    config_class = model_class = ""
    clip_bounds = False
    defaults = (128 * 28 * 28, 768 * 28 * 28, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

    def template_video(self, tokenizer) -> str:
        return WRAPPER

    def prompt_length(self, vlm, n_video, before, after) -> int:
        return len(before) + n_video + 2 + len(after)  # + <|vision_start|><|vision_end|> (Qwen3-VL: per patch, +time)

    # ---------------------------------------------------------------- load
    def load(self, opts, model_dir, raw, status):
        import transformers

        from scissor_cli.checkpoint import _check_loading_info, _weight_files
        from scissor_cli.devices import resolve_device, resolve_dtype
        from scissor_cli.families.loading import _quiet_transformers, device_map_for, from_pretrained, load_tokenizer

        name, revision = opts.model, opts.revision
        _, is_safetensors = _weight_files(model_dir, name, opts.allow_pickle)
        config_cls = getattr(transformers, self.config_class, None)
        model_cls = getattr(transformers, self.model_class, None)
        if config_cls is None or model_cls is None:
            raise ModelError(
                f"model {name} is {self.name}, which this transformers ({transformers.__version__}) does not have",
                hint=f'pip install "transformers>={self.min_transformers},<6"',
            )
        try:
            with _quiet_transformers():
                config = config_cls.from_pretrained(str(model_dir))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ModelError(f"model {name}: its config.json is not a {self.name} config: {type(e).__name__}: {e}",
                             hint="re-download the checkpoint or fix config.json") from e  # fmt: skip
        device = resolve_device(opts.device)
        dtype = resolve_dtype(opts.dtype, device)
        tokenizer = load_tokenizer(model_dir, name, revision)
        device_map = device_map_for(opts, device)
        status(f"loading {name} ({self.name}) on {device} as {str(dtype).removeprefix('torch.')}")
        hf_model, info = from_pretrained(
            model_cls, model_dir, name, "Hugging Face", self.name,
            config=config, dtype=dtype, device_map=device_map, use_safetensors=is_safetensors,
        )  # fmt: skip
        _check_loading_info(info, config, name, self.name)
        if device_map is None:
            hf_model.to(device)
        hf_model.eval()
        settings = self.settings(model_dir, config)
        return hf_model, tokenizer, dict(
            name=name, revision=revision, layout="hf", newline=False, image_size=None, mean=settings.mean,
            std=settings.std, model_dir=model_dir, family_settings=settings,
        )  # fmt: skip

    def settings(self, model_dir, config) -> QwenSettings:
        """The video processor's settings, found where transformers looks: processor_config.json's
        ``video_processor``, video_preprocessor_config.json, preprocessor_config.json; else the class defaults."""
        from scissor_cli.checkpoint import _read_json

        proc = _read_json(model_dir / "processor_config.json") or {}
        found = [proc.get("video_processor"), _read_json(model_dir / "video_preprocessor_config.json"),
                 _read_json(model_dir / "preprocessor_config.json")]  # fmt: skip
        chosen = next((c for c in found if isinstance(c, dict)), {})
        size = chosen.get("size") or {}
        min_pixels, max_pixels, mean, std = self.defaults
        min_pixels = int(chosen.get("min_pixels") or size.get("shortest_edge") or min_pixels)
        max_pixels = int(chosen.get("max_pixels") or size.get("longest_edge") or max_pixels)
        v = config.vision_config
        return QwenSettings(
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            patch=int(chosen.get("patch_size") or v.patch_size),
            merge=int(chosen.get("merge_size") or v.spatial_merge_size),
            temporal=int(chosen.get("temporal_patch_size") or v.temporal_patch_size),
            mean=tuple(float(x) for x in chosen.get("image_mean", mean)),
            std=tuple(float(x) for x in chosen.get("image_std", std)),
            clip_bounds=self.clip_bounds,
            dim=int(config.text_config.hidden_size),
            n_deep=len(getattr(v, "deepstack_visual_indexes", None) or ()),
            video_id=int(config.video_token_id),
        )

    # ---------------------------------------------------------------- encode
    def frame_size(self, s: QwenSettings, n_frames: int, height: int, width: int) -> tuple[int, int]:
        return s.frame_size(n_frames, height, width)

    def input_sizer(self, vlm) -> QwenSettings:
        return vlm.family_settings  # each video has its own input size: the decoder asks the settings

    def encode(self, vlm, frames, on_progress, resized):
        """uint8 [F, H, W, 3] -> [T', H', W', D (x (1 + L))]: the whole clip through the vision tower at once."""
        import torch

        from scissor_cli.families.qwen_preprocess import preprocess

        s: QwenSettings = vlm.family_settings
        n_frames, height, width = frames.shape[:3]
        size = self.frame_size(s, n_frames, height, width)
        if vlm.on_step is not None:
            vlm.on_step()
        with torch.inference_mode():
            pixels, (t, h, w) = preprocess(frames, size, s.mean, s.std, s.patch, s.merge, s.temporal)
            grid = torch.tensor([[t, h, w]], device=vlm.device)
            out = vlm.hf_model.model.get_video_features(pixels.to(vlm.device, vlm.dtype), grid)
            main, deep = _vision_outputs(out)
            parts = [main, *deep]
            features = torch.cat(parts, -1).reshape(t, h // s.merge, w // s.merge, -1)
        if on_progress is not None:
            on_progress(n_frames, n_frames)
        return features.to(vlm.device)

    def cache_tag(self, vlm) -> str:
        s: QwenSettings = vlm.family_settings
        return (f"|{self.name}:{s.min_pixels}-{s.max_pixels}px:p{s.patch}m{s.merge}t{s.temporal}:"
                f"{','.join(map(str, s.mean))}/{','.join(map(str, s.std))}")  # fmt: skip

    def feature_shape(self, vlm, n_frames: int):
        s: QwenSettings = vlm.family_settings
        return (-(-n_frames // s.temporal), None, None, s.dim * (1 + s.n_deep))

    def frames_covered(self, n_rows: int) -> int:
        return 2 * n_rows

    def video_layout(self, vlm, features, indices, info) -> QwenVideo:
        s: QwenSettings = vlm.family_settings
        t, h, w, _ = features.shape
        fps = getattr(info, "fps", None) or None
        total = getattr(info, "n_frames", None) or None
        return QwenVideo((t, h, w), s.dim, s.n_deep, s.merge, *self.time_layout(s, list(indices), fps, total))

    def time_layout(self, s, indices, fps, total):
        raise NotImplementedError

    # ---------------------------------------------------------------- generate
    def video_text(self, video: QwenVideo) -> str:
        raise NotImplementedError

    def rope_index(self, vlm, ids, types, video: QwenVideo):
        raise NotImplementedError

    def generate_inputs(self, vlm, requests, history, pad_id):
        """Per request: the uncompressed prompt's ids and M-RoPE positions, then the text's and the kept tokens'
        columns; rows left-padded into one batch."""
        import torch

        s: QwenSettings = vlm.family_settings
        rows = []
        for video, question in requests:
            if not isinstance(video, QwenTokens):
                raise TypeError(f"{self.name} takes QwenTokens (pipeline.compress_video), not {type(video).__name__}")
            before, after = vlm._prompt_pieces(question, tuple(history))
            ids = vlm._tokenize_pieces([*before, (self.video_text(video.video), False), *after])
            ids = torch.tensor([ids], dtype=torch.long, device=vlm.device)
            types = (ids == s.video_id).int() * 2  # mm_token_type_ids: 0 text, 2 video
            pos = self.rope_index(vlm, ids, types, video.video)[:, 0]  # [3, L]
            cols = (ids[0] == s.video_id).nonzero().squeeze(1)
            if cols.numel() != video.video.n_tokens:
                raise ModelError(
                    f"model {vlm.name}: the prompt holds {cols.numel()} video placeholders, not {video.video.n_tokens}",
                    hint="the chat template renders the video more than once",
                )
            keep = torch.ones(ids.shape[1], dtype=torch.bool, device=vlm.device)
            keep[cols] = False
            keep[cols[video.representative.to(vlm.device)]] = True
            rows.append((ids[0, keep], pos[:, keep]))
        lengths = [r[0].shape[0] for r in rows]
        n, b = max(lengths), len(rows)
        input_ids = torch.full((b, n), pad_id, dtype=torch.long, device=vlm.device)
        mask = torch.zeros((b, n), dtype=torch.long, device=vlm.device)
        positions = torch.zeros((4, b, n), dtype=torch.long, device=vlm.device)
        for i, (row_ids, row_pos) in enumerate(rows):
            input_ids[i, n - row_ids.shape[0] :] = row_ids
            mask[i, n - row_ids.shape[0] :] = 1
            positions[1:, i, n - row_ids.shape[0] :] = row_pos
        positions[0] = (mask.cumsum(-1) - 1).clamp_min(0)  # the text row: plain positions, as for 1-D models
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": positions,
            "mm_encoder_outputs": {"video": self.encoder_outputs(vlm, [v for v, _ in requests])},
        }, lengths

    def share_prefix(self, vlm, inputs, videos):
        """Requests about one video (the same ``QwenTokens``) whose ids agree up to the video's last
        ``<|vision_end|>``: that prefix runs through the model once, batch 1, with the video's vision outputs
        (DeepStack is added there), and its KV cache is copied into each row. Rows are laid out as
        [pad][prefix][pad][suffix] (``engines.hf.stack_prefixes``); each suffix keeps the M-RoPE positions of its
        own uncompressed-rule sequence and holds no video placeholder, so ``generate`` gets no vision outputs.
        The mask hides the pads; the text row counts each row's own tokens, as in the left-padded batch."""
        import torch
        from transformers import DynamicCache

        from scissor_cli.engines.hf import stack_prefixes

        end_id = vlm.tokenizer.convert_tokens_to_ids(VISION_END)
        mask = inputs["attention_mask"].bool()
        rows, first = [], {}
        for i, video in enumerate(videos):
            ids, pos = inputs["input_ids"][i, mask[i]], inputs["position_ids"][1:, i, mask[i]]  # [L], [3, L]
            # video_text ends with <|vision_end|> and holds every placeholder; user text never spells the special id
            p = int((ids == end_id).nonzero()[-1, 0]) + 1
            rows.append((ids, pos, p, first.setdefault((id(video), tuple(ids[:p].tolist())), i)))
        if len(first) == len(rows):
            return None
        n_prefix = max(p for _, _, p, _ in rows)
        n = n_prefix + max(ids.shape[0] - p for ids, _, p, _ in rows)
        b, device = len(rows), vlm.device
        input_ids = torch.full((b, n), vlm._pad_id(), dtype=torch.long, device=device)
        attention = torch.zeros((b, n), dtype=torch.long, device=device)
        positions = torch.zeros((4, b, n), dtype=torch.long, device=device)
        text_config = vlm.hf_model.config.get_text_config(decoder=True)
        computed, shared, n_prefill = {}, [], []
        for i, (ids, pos, p, lead) in enumerate(rows):
            tail = ids.shape[0] - p
            for at, part in ((slice(n_prefix - p, n_prefix), slice(0, p)), (slice(n - tail, n), slice(p, None))):
                input_ids[i, at], attention[i, at], positions[1:, i, at] = ids[part], 1, pos[:, part]
            shared.append((lead, p))
            n_prefill.append(tail + (p if lead == i else 0))
            if lead == i:
                if vlm.on_step is not None:
                    vlm.on_step()  # batch's decode-ahead sizes the thread pool before each forward pass
                kv = DynamicCache(config=text_config)
                text = torch.arange(p, device=device)[None, None]
                vlm.hf_model.model(
                    input_ids=ids[None, :p], attention_mask=torch.ones(1, p, dtype=torch.long, device=device),
                    position_ids=torch.cat([text, pos[:, None, :p]], 0),
                    mm_encoder_outputs={"video": self.encoder_outputs(vlm, [videos[i]])}, cache=kv, use_cache=True,
                )  # fmt: skip
                computed[i] = kv
        positions[0] = (attention.cumsum(-1) - 1).clamp_min(0)  # the text row: each row's own token count
        kv = stack_prefixes(computed, shared, n_prefix, text_config)
        return {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions}, kv, n_prefill

    def reuse_cache(self, vlm, cache, inputs, video) -> tuple[Any, int]:
        """A chat's KV cache (``engines.hf.PromptCache``, its ``tail`` the ids it holds) for this one-row prompt: the
        longest common prefix, never into the video unless the same kept tokens are cached whole (their vision
        outputs are then left out of ``inputs``). Positions before a token do not depend on what follows it, so the
        cached keys are the ones this prompt computes. Returns (the cache cropped to what is reused, or None; that
        count)."""
        from scissor_cli.engines.hf import _common

        ids = inputs["input_ids"][0].tolist()
        kv, held = cache.kv, (cache.kv.get_seq_length() if cache.kv is not None else 0)
        cols = [i for i, t in enumerate(ids) if t == vlm.family_settings.video_id]
        first, last = (cols[0], cols[-1] + 1) if cols else (len(ids), len(ids))
        n = _common(ids, cache.tail)
        if video is not cache.video:
            n = min(n, first)  # other kept tokens: only the text before the video is the same
        n = min(n, held, len(ids) - 1)
        if first < n < last:
            n = first  # a video is prefilled whole
        cache.clear()  # generate extends the cache in place: valid again only once generate returned
        if kv is None or n <= 0:
            return None, 0
        if held > n:
            kv.crop(n - held)  # a negative count removes that many positions
        if n >= last:
            inputs.pop("mm_encoder_outputs")  # no placeholder left to fill
        return kv, n

    def keep_cache(self, cache, kv, inputs, new_ids: list[int], video) -> None:
        """After generate: the cache holds the prompt and the answer but its last token (never fed back)."""
        ids = inputs["input_ids"][0].tolist() + new_ids
        cache.kv, cache.before, cache.video, cache.n_video = kv, (), video, 0
        cache.tail = tuple(ids[: kv.get_seq_length()])

    def encoder_outputs(self, vlm, videos):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=tuple(v.tokens.to(vlm.device, vlm.dtype) for v in videos))


def _vision_outputs(out):
    """``get_video_features``' result -> (main [N, D], [DeepStack [N, D] per level]), across transformers
    versions (an output object with tuples per video, or a plain tuple)."""
    import torch

    main = getattr(out, "pooler_output", None)
    deep = getattr(out, "deepstack_features", None)
    if main is None and isinstance(out, tuple):  # older releases: (embeds, deepstack) or embeds
        main, deep = (out[0], out[1]) if len(out) == 2 and isinstance(out[1], (list, tuple)) else (out, None)
    if isinstance(main, (list, tuple)):
        main = torch.cat(list(main), 0)
    levels = [torch.cat(list(d), 0) if isinstance(d, (list, tuple)) else d for d in (deep or [])]
    return main, levels


class Qwen25VL(QwenFamily):
    config_class, model_class = "Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"

    def time_layout(self, s, indices, fps, total):
        # the processor's second_per_grid_ts: temporal patch size / the sampled frames' mean fps
        sampled_fps = len(indices) / total * fps if fps and total else (fps or 24)
        return s.temporal / sampled_fps, None

    def video_text(self, video: QwenVideo) -> str:
        return VISION_START + VIDEO_PAD * video.n_tokens + VISION_END

    def rope_index(self, vlm, ids, types, video: QwenVideo):
        import torch

        t, h, w = video.grid
        grid = torch.tensor([[t, h * video.merge, w * video.merge]], device=ids.device)
        pos, _ = vlm.hf_model.model.get_rope_index(
            ids, mm_token_type_ids=types, video_grid_thw=grid,
            second_per_grid_ts=torch.tensor([video.second_per_grid], device=ids.device),
            attention_mask=torch.ones_like(ids),
        )  # fmt: skip
        vlm.hf_model.model.rope_deltas = None  # module state a later call would otherwise reuse
        return pos


class Qwen3VL(QwenFamily):
    config_class, model_class = "Qwen3VLConfig", "Qwen3VLForConditionalGeneration"
    clip_bounds = True
    defaults = (128 * 32 * 32, 768 * 32 * 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def prompt_length(self, vlm, n_video, before, after) -> int:
        return len(before) + n_video + 2 + len(after)  # a lower bound: each further temporal patch adds its text

    def time_layout(self, s, indices, fps, total):
        fps = fps or 24  # the processor's default when the video's fps is unknown
        padded = indices + [indices[-1]] * (-len(indices) % s.temporal)
        times = [i / fps for i in padded]
        return None, tuple((times[i] + times[i + s.temporal - 1]) / 2 for i in range(0, len(times), s.temporal))

    def video_text(self, video: QwenVideo) -> str:
        _, h, w = video.grid
        return "".join(f"<{t:.1f} seconds>" + VISION_START + VIDEO_PAD * (h * w) + VISION_END for t in video.times)

    def rope_index(self, vlm, ids, types, video: QwenVideo):
        import torch

        t, h, w = video.grid
        grid = torch.tensor([[t, h * video.merge, w * video.merge]], device=ids.device)
        pos, _ = vlm.hf_model.model.get_rope_index(ids, mm_token_type_ids=types, video_grid_thw=grid,
                                                   attention_mask=torch.ones_like(ids))  # fmt: skip
        vlm.hf_model.model.rope_deltas = None
        return pos

    def encoder_outputs(self, vlm, videos):
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        n_deep, dim = videos[0].video.n_deep, videos[0].video.dim
        deep = [tuple(v.deepstack[:, k * dim : (k + 1) * dim].to(vlm.device, vlm.dtype) for v in videos)
                for k in range(n_deep)]  # fmt: skip
        return BaseModelOutputWithDeepstackFeatures(
            pooler_output=tuple(v.tokens.to(vlm.device, vlm.dtype) for v in videos), deepstack_features=deep
        )
