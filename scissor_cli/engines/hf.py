"""The ``hf`` engine: transformers' ``generate`` in scissor's own process, the reference path for every family:
LLaVA-OV's rows of embeddings (``inputs_embeds``, left-padded, a video prefix shared by several questions
prefilled once) or a ``positions`` family's prepared ids, M-RoPE positions and vision outputs (``Prompts.inputs``,
families.qwen); a chat's KV cache between turns (``PromptCache``) and a shared video prefix, through the family's
hooks for the latter (``reuse_cache``/``keep_cache``, ``share_prefix``); the first request streamed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scissor_cli.engines import GenerationOutput, Prompts

if TYPE_CHECKING:
    from scissor_cli.options import GenerationOptions


@dataclass
class PromptCache:
    """A conversation's KV cache between ``generate`` calls (``scissor chat``): the next turn prefills only what
    follows the longest common prefix of its prompt and what the cache holds (llama.cpp's and ollama's rule).

    What the cache holds is named by token ids, and the video by the tensor object passed in: a new compression
    (``/retention``, ``/tokens``, ``/tau``, ``/off``) or new frames (``/frames``, ``/video``) is another tensor, so
    only the text before the video is kept; ``/reset`` drops the earlier turns, so the cache is cut after the video."""

    kv: Any = None  # transformers' DynamicCache, or None (empty)
    before: tuple[int, ...] = ()  # the prompt's ids before the video
    video: Any = None  # the video tensor the cache was computed with
    n_video: int = 0  # its tokens (+ image_newline)
    tail: tuple[int, ...] = ()  # ids after the video the cache holds: the prompt's rest and the generated tokens

    def reusable(self, before: list[int], video: Any, n_video: int, after: list[int]) -> int:
        """How many leading positions of this prompt the cache already holds."""
        if self.kv is None:
            return 0
        if tuple(before) != self.before:
            return _common(before, self.before)
        if video is not self.video or n_video != self.n_video:
            return len(before)
        return len(before) + n_video + _common(after, self.tail)

    def clear(self) -> None:
        self.kv, self.before, self.video, self.n_video, self.tail = None, (), None, 0, ()


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class HFEngine:
    """The LLM step on the loaded ``VisionLanguageModel``'s own transformers model."""

    name = "hf"

    def __init__(self, vlm: Any):
        self.vlm = vlm  # model.VisionLanguageModel: its hf_model, tokenizer, eos ids and on_step hook

    def close(self) -> None:
        pass

    def generate(
        self,
        prompts: Prompts,
        gen: GenerationOptions,
        *,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool | Sequence[bool]] | None = None,
        cache: PromptCache | None = None,
        share_prefix: bool = True,
    ) -> GenerationOutput:
        """``VisionLanguageModel.generate``'s LLM step (its docstring says what each argument does): one
        ``generate`` call on ``prompts.rows`` (``inputs_embeds``) or ``prompts.inputs``, left padding."""
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        vlm = self.vlm
        tok = vlm.tokenizer
        pad_id = vlm._pad_id()
        t0, lengths = prompts.t0, prompts.lengths
        with torch.inference_mode():
            if prompts.inputs is not None:  # a ``positions`` family's ids, M-RoPE positions and vision outputs
                inputs, n_prefill, kv = dict(prompts.inputs), list(lengths), None
                if cache is not None:
                    kv, n_reuse = vlm.family.reuse_cache(vlm, cache, inputs, prompts.videos[0])
                    n_prefill = [lengths[0] - n_reuse]
                elif share_prefix and (shared := vlm.family.share_prefix(vlm, inputs, prompts.videos)) is not None:
                    inputs, kv, n_prefill = shared  # a video prefix shared by several rows, prefilled once
            else:
                inputs, n_prefill, kv = self._embed_inputs(prompts, pad_id, cache, share_prefix)

            sample = gen.temperature > 0
            config = GenerationConfig(
                max_new_tokens=gen.max_new_tokens,
                do_sample=sample,
                temperature=gen.temperature if sample else None,
                top_p=gen.top_p if sample else None,
                top_k=None,
                eos_token_id=vlm._eos_ids(),
                pad_token_id=pad_id,
                suppress_tokens=vlm.suppress_ids or None,
                return_dict_in_generate=cache is not None,  # for the cache it leaves
            )

            eos = set(vlm._eos_ids())

            class _FirstToken(BaseStreamer):
                """generate() puts the prompt first, then each step's tokens: the 2nd put is the first token.
                With ``on_text``, the first row's new text is passed on as it grows (nothing after its eos)."""

                def __init__(self):
                    self.n_puts, self.t_first = 0, None
                    self.ids: list[int] = []
                    self.n_sent, self.done = 0, False

                def put(self, value):
                    self.n_puts += 1
                    if self.n_puts == 2:
                        self.t_first = time.perf_counter()
                    if on_text is None or self.n_puts < 2 or self.done:
                        return
                    token = int(value.reshape(-1)[0])  # [B] per step: the first request's token
                    if token in eos:
                        self.done = True
                        return
                    self.ids.append(token)
                    self._send(final=False)

                def _send(self, final: bool):
                    text = tok.decode(self.ids, skip_special_tokens=True).lstrip()
                    if not final and text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                        return
                    if len(text) > self.n_sent:
                        on_text(text[self.n_sent :])
                        self.n_sent = len(text)

                def end(self):
                    if on_text is not None:
                        self._send(final=True)

            on_step = vlm.on_step

            stopped_at: dict[int, int] = {}  # row -> tokens it had when should_stop flagged it

            class _Stop(StoppingCriteria):
                """After each step: ``on_step``, then ``should_stop`` (either may be None; it may flag rows)."""

                n_steps = 0

                def __call__(self, input_ids, scores, **kwargs):
                    if on_step is not None:
                        on_step()
                    self.n_steps += 1
                    n_rows = input_ids.shape[0]
                    stop = should_stop() if should_stop is not None else False
                    flags = [bool(f) for f in stop] if isinstance(stop, (list, tuple)) else [bool(stop)] * n_rows
                    for i, flag in enumerate(flags):
                        if flag:
                            stopped_at.setdefault(i, self.n_steps)
                    return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

            hooked = should_stop is not None or on_step is not None
            stopping = StoppingCriteriaList([_Stop()]) if hooked else None
            if on_step is not None:
                on_step()  # before the prefill
            streamer = _FirstToken()
            devices = [vlm.device] if vlm.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices, enabled=sample):
                if sample:  # a caller that wants to reproduce the answer passes a seed (pipeline records it)
                    torch.manual_seed(gen.with_drawn_seed().seed)
                result = vlm.hf_model.generate(
                    **inputs,
                    generation_config=config,
                    streamer=streamer,
                    stopping_criteria=stopping,
                    cache=kv,
                )
                t_end = time.perf_counter()
        out = result.sequences if cache is not None else result  # [B, n_new]: only the new tokens (inputs_embeds)
        if "input_ids" in inputs:  # generate returned the prompt's ids first
            out = out[:, inputs["input_ids"].shape[1] :]
        if cache is not None and prompts.inputs is not None:
            vlm.family.keep_cache(cache, result.cache, inputs, out[0].tolist(), prompts.videos[0])
        elif cache is not None:
            held, (before, after), n_video = result.cache, prompts.ids[0], prompts.n_video[0]
            n_tail = held.get_seq_length() - len(before) - n_video  # the last generated token was never fed
            cache.kv, cache.before, cache.video, cache.n_video = held, tuple(before), prompts.videos[0], n_video
            cache.tail = tuple(after + out[0].tolist())[:n_tail]
        t_first = streamer.t_first or t_end
        texts, n_new, token_ids = [], [], []
        for r, row in enumerate(out.tolist()):
            cut = next((i for i, t in enumerate(row) if t in eos), len(row))
            cut = min(cut, stopped_at.get(r, cut))  # a row stopped alone: padding follows what it had
            n_new.append(cut)
            token_ids.append(row[:cut])
            texts.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
        return GenerationOutput(
            texts=texts,
            n_prompt_tokens=lengths,
            prefill_s=t_first - t0,
            generation_s=t_end - t_first,
            n_new_tokens=n_new,
            token_ids=token_ids,
            n_prefill_tokens=n_prefill,
        )

    def _embed_inputs(self, prompts: Prompts, pad_id: int, cache: PromptCache | None, share_prefix: bool):
        """LLaVA-OV's ``generate`` inputs: the embedded rows left-padded (or laid out around shared prefixes, or
        after what ``cache`` holds). Returns (generate's keyword arguments, tokens to prefill per request, the KV
        cache to start from or None)."""
        import torch

        vlm, rows, lengths = self.vlm, prompts.rows, prompts.lengths
        n_prefill = list(lengths)
        n_max = max(lengths)
        pad = vlm.hf_model.get_input_embeddings()(torch.tensor([pad_id], device=vlm.device))[0]
        kv = None
        n_video, ids = prompts.n_video, prompts.ids
        if cache is not None:
            (before, after), video = ids[0], prompts.videos[0]
            n_reuse = min(cache.reusable(before, video, n_video[0], after), lengths[0] - 1)
            kv, n_held = cache.kv, (cache.kv.get_seq_length() if cache.kv is not None else 0)
            n_reuse = min(n_reuse, n_held)
            cache.clear()  # generate extends the cache in place: it is valid again only once generate returned
            if kv is not None and n_reuse > 0:
                if n_held > n_reuse:
                    kv.crop(n_reuse - n_held)  # a negative count removes that many positions
                n_prefill = [lengths[0] - n_reuse]
            else:
                kv = None
            embeds = rows[0][None]  # [1, L, D]: generate skips the positions the cache holds
            mask = torch.ones(1, lengths[0], dtype=torch.long, device=vlm.device)
        elif share_prefix and (shared := self._shared_prefixes(prompts.videos, ids, n_video)) is not None:
            embeds, mask, kv, n_prefill = self._prefix_batch(rows, shared, pad)
        else:
            embeds = torch.stack([torch.cat([pad.expand(n_max - r.shape[0], -1), r], 0) for r in rows])
            mask = torch.zeros(len(rows), n_max, dtype=torch.long, device=vlm.device)  # embeds: [B, L, D]
            for i, n in enumerate(lengths):
                mask[i, n_max - n :] = 1
        return {"inputs_embeds": embeds, "attention_mask": mask}, n_prefill, kv

    def _shared_prefixes(self, videos, ids, n_video) -> list[tuple[int, int]] | None:
        """Per request (its group's first request, its prefix length) where two or more requests share one video
        tensor and the text before it; None when none do (nothing to share)."""
        first: dict[tuple, int] = {}
        groups = []
        for i, (video, (before, _)) in enumerate(zip(videos, ids, strict=True)):
            lead = first.setdefault((id(video), tuple(before)), i)
            groups.append((lead, len(before) + n_video[i]))
        return groups if len(set(groups)) < len(groups) else None

    def _prefix_batch(self, rows, shared, pad):
        """Each group's prefix prefilled once (batch 1), then every row laid out as [pad][prefix][pad][suffix]:
        prefixes right-aligned in the first ``P`` positions, suffixes right-aligned after them. The attention mask
        hides the pads, so the positions (from the mask, as generate computes them) and what each token sees are
        those of the left-padded batch without a cache. Returns (embeds [B, P+S, D], mask, cache, n_prefill)."""
        import torch
        from transformers import DynamicCache

        n_prefix = max(p for _, p in shared)
        n_suffix = max(r.shape[0] - p for r, (_, p) in zip(rows, shared, strict=True))
        b, device = len(rows), self.vlm.device
        embeds = pad.expand(b, n_prefix + n_suffix, -1).clone()
        mask = torch.zeros(b, n_prefix + n_suffix, dtype=torch.long, device=device)
        text_config = self.vlm.hf_model.config.get_text_config(decoder=True)
        computed: dict[int, Any] = {}
        n_prefill = []
        for i, (row, (lead, p)) in enumerate(zip(rows, shared, strict=True)):
            s = row.shape[0] - p
            embeds[i, n_prefix - p : n_prefix] = row[:p]
            embeds[i, n_prefix + n_suffix - s :] = row[p:]
            mask[i, n_prefix - p : n_prefix] = 1
            mask[i, n_prefix + n_suffix - s :] = 1
            n_prefill.append(s + (p if lead == i else 0))
            if lead not in computed:
                if self.vlm.on_step is not None:
                    self.vlm.on_step()  # batch's decode-ahead sizes the thread pool before each forward pass
                prefix_kv = DynamicCache(config=text_config)
                self.vlm.hf_model.model(inputs_embeds=row[None, :p], cache=prefix_kv, use_cache=True)
                computed[lead] = prefix_kv
        return embeds, mask, stack_prefixes(computed, shared, n_prefix, text_config), n_prefill


def stack_prefixes(computed: dict[int, Any], shared: list[tuple[int, int]], n_prefix: int, text_config) -> Any:
    """One batch's KV cache from its groups' prefix caches (``computed``: lead request -> its batch-1 cache of
    ``p`` positions): row ``i`` holds its group's prefix right-aligned in the first ``n_prefix`` positions, zeros
    (masked) before it. ``shared``: per request (its group's lead, its prefix length ``p``)."""
    from transformers import DynamicCache

    layers: list[tuple[Any, Any]] = []
    b = len(shared)
    for i, (lead, p) in enumerate(shared):
        for layer, (k, v, *_) in enumerate(computed[lead]):  # k, v: [1, heads, p, head_dim]
            if len(layers) <= layer:
                shape = (b, k.shape[1], n_prefix, k.shape[3])
                layers.append((k.new_zeros(shape), v.new_zeros(shape)))
            layers[layer][0][i, :, n_prefix - p :] = k[0]
            layers[layer][1][i, :, n_prefix - p :] = v[0]
    return DynamicCache(ddp_cache_data=layers, config=text_config)
