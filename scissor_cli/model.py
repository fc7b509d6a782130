"""Vision-language models through transformers: load a checkpoint, encode frames into video tokens, generate with
(compressed) video tokens in the prompt. With ``checkpoint`` and ``families``, the only modules that import
transformers. What differs per model family (LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL: loading, the vision call, how
kept tokens reach ``generate``) is in ``families/``, chosen once at load (docs/models.md, "Model families"); below,
LLaVA-OV's seam.

The seam is deliberately narrow (docs/models.md, "The transformers seam"): ``encode`` runs what transformers'
``get_video_features`` runs (SigLIP -> projector -> 2x2 bilinear pooling) and strips its trailing
``image_newline``; ``generate`` splices the kept tokens (+ ``image_newline`` when ``newline``) where the prompt's
single video placeholder and hands the rows to the engine (``engines``: hf's ``generate(inputs_embeds=...)`` or
vLLM's prompt embeddings). With nothing removed this is bit-identical to transformers' own path (``input_ids`` with
expanded placeholders + ``pixel_values_videos``); a test checks it.

The two checkpoint layouts (llava-hf, LLaVA-NeXT), resolving and checking them: ``checkpoint``; the device and
dtype: ``devices``.

torch and transformers are imported inside functions: the CLI's light paths import this module's names only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scissor_cli.checkpoint import _read_json, resolve_model_dir
from scissor_cli.engines import Engine, GenerationOutput, Prompts, refuse_position_ids
from scissor_cli.engines.hf import HFEngine, PromptCache
from scissor_cli.errors import ModelError, OptionError
from scissor_cli.families.llava_ov import FRAMES_PER_CHUNK  # noqa: F401 - re-exported (tests, bench)
from scissor_cli.families.pixels import preprocess_frames  # noqa: F401 - re-exported (tests, bench)
from scissor_cli.options import GenerationOptions, ModelOptions

if TYPE_CHECKING:
    import numpy as np
    import torch

# A placeholder no tokenizer will split or produce from user text; the prompt is cut around it.
VIDEO_MARK = "\u2063<scissor-video>\u2063"
# Stands for the i-th user text while the template renders (``_prompt_pieces``); cut out again afterwards.
_TEXT_MARK = "\u2063<scissor-text-{}>\u2063"
_MARK_RE = re.compile("\u2063<scissor-text-(\\d+)>\u2063")


class VisionLanguageModel:
    """A loaded checkpoint of one of the ``families``: ``encode`` frames into video tokens, ``generate`` answers."""

    def __init__(self, hf_model, tokenizer, *, name: str, revision: str | None, layout: str, newline: bool,
                 image_size: tuple[int, int], mean: tuple, std: tuple,
                 default_tau: float | None = None, default_epsilon: float | None = None,
                 model_dir: Path | None = None, family: Any = None, family_settings: Any = None,
                 engine: Any = None):  # fmt: skip
        from scissor_cli.families import LLAVA_OV

        self.family = family if family is not None else LLAVA_OV  # what differs per model family (families/)
        self.family_settings = family_settings  # the family's own (Qwen: families.qwen.QwenSettings)

        self.hf_model = hf_model  # LlavaOnevisionForConditionalGeneration, eval mode
        self.tokenizer = tokenizer
        self.name = name
        self.revision = revision
        self.layout = layout
        self.newline = newline
        self.default_tau = default_tau  # the checkpoint's mm_zip_tau (LLaVA-Scissor baselines), else None
        self.default_epsilon = default_epsilon
        self.model_dir = model_dir  # the resolved folder (a Hub snapshot is named by its commit)
        self.image_size = image_size  # (height, width) frames are resized to; None: per video (Qwen)
        self.mean, self.std = mean, std
        embeddings = hf_model.get_input_embeddings()
        self.device: torch.device = embeddings.weight.device  # first device under device_map="auto"
        self.dtype: torch.dtype = embeddings.weight.dtype
        cfg = hf_model.config
        self.tokens_per_frame: int | None = self.family.tokens_per_frame(cfg)  # None: depends on the video
        self.hidden_size = cfg.text_config.hidden_size
        self.n_layers = cfg.text_config.num_hidden_layers
        self.ffn_size = cfg.text_config.intermediate_size
        vocab = tokenizer.get_vocab()
        # <image>/<video> exist in llava-hf tokenizers only; never generated as text
        self.suppress_ids = sorted({vocab[t] for t in ("<image>", "<video>") if t in vocab})
        self._prompt_cache: dict[tuple, tuple[list[int], list[int]]] = {}
        self._max_token_chars: int | None = None
        self._added_texts: list[str] | None = None  # what the tokenizer matches before its model (special or not)
        # the LLM's context: prompt + answer must fit (a chat checks it before each turn)
        self.max_positions: int | None = getattr(cfg.text_config, "max_position_embeddings", None)
        # called before each vision chunk and each generation step (batch's decode-ahead sizes torch's thread pool
        # there: prefetch.CoreShare); None: nothing
        self.on_step: Callable[[], None] | None = None
        # the LLM step (``engines``): transformers' generate here, or an engine the family's load started (vLLM)
        self.engine: Engine = engine.bind(self) if engine is not None else HFEngine(self)

    def __repr__(self) -> str:
        return (f"VisionLanguageModel({self.name!r}, layout={self.layout}, device={self.device}, "
                f"dtype={self.dtype}, newline={self.newline})")  # fmt: skip

    # ------------------------------------------------------------------ encode
    def encode(
        self,
        frames: np.ndarray | None,
        on_progress: Callable[[int, int], None] | None = None,
        *,
        resized: np.ndarray | None = None,
    ) -> torch.Tensor:
        """uint8 [F, H, W, 3] -> the video's features on ``self.device`` in ``self.dtype``: [F, T, D] for
        LLaVA-OV (T = tokens_per_frame), the family's own layout otherwise (``families``).

        ``on_progress(n_done, n_frames)`` after each chunk. ``resized`` (instead of ``frames``): the frames already
        through ``resize_frames`` at ``self.image_size``, uint8 [F, 3, S, S] (decode-ahead workers resize)."""
        if resized is not None:
            if self.image_size is None:
                raise ValueError(f"{self.family.name} resizes each video to its own size: pass frames")
            if resized.ndim != 4 or tuple(resized.shape[1:]) != (3, *self.image_size) or resized.shape[0] < 1:
                raise ValueError(f"resized frames must be uint8 [F, 3, {self.image_size[0]}, {self.image_size[1]}] "
                                 f"with F >= 1, got shape {tuple(resized.shape)}")  # fmt: skip
        elif frames is None or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
            shape = None if frames is None else tuple(frames.shape)
            raise ValueError(f"frames must be uint8 [F, H, W, 3] with F >= 1, got shape {shape}")
        return self.family.encode(self, frames, on_progress, resized)

    # ------------------------------------------------------------------ prompt
    def prompt_ids(self, question: str, history: Sequence[tuple[str, str]] = ()) -> tuple[list[int], list[int]]:
        """Token ids before and after the video in the checkpoint's prompt for ``question`` (user turn = [video,
        text], generation prompt added; which format: ``_prompt_pieces``). Never relies on a <video> id being in
        the vocabulary.

        User text (questions, answers) is tokenized as plain text: ``<|im_end|>`` or ``<video>`` typed in a
        question become ordinary tokens, never a turn delimiter or a placeholder; the template's own markers stay
        special.

        ``history``: earlier (question, answer) turns of a conversation; the video stays in the first user turn and
        ``question`` becomes the last one (empty history: the single-question prompt ``ask`` uses)."""
        key = (question, tuple(history))
        if key not in self._prompt_cache:
            ids = tuple(self._tokenize_pieces(side) for side in self._prompt_pieces(question, key[1]))
            if len(self._prompt_cache) > 256:
                self._prompt_cache.clear()
            self._prompt_cache[key] = ids  # type: ignore[assignment]
        return self._prompt_cache[key]

    def _tokenize_pieces(self, pieces: list[tuple[str, bool]]) -> list[int]:
        """Ids of the joined pieces. User text that spells an added token (``<|im_end|>``, ``<video>``, ...) is
        tokenized on its own as plain text; otherwise the whole prompt is tokenized at once (the ids transformers'
        own path gives, also where a piece boundary would change a merge, e.g. a question starting with spaces)."""
        tok = self.tokenizer
        if self._added_texts is None:
            self._added_texts = [t.content for t in tok.added_tokens_decoder.values() if t.content]
        if not any(user and any(a in text for a in self._added_texts) for text, user in pieces):
            return tok("".join(text for text, _ in pieces), add_special_tokens=False).input_ids
        ids = []
        for text, is_user in pieces:
            if text:
                ids += tok(text, add_special_tokens=False, split_special_tokens=is_user).input_ids
        return ids

    def prompt_length(self, n_video: int, question: str, history: Sequence[tuple[str, str]] = ()) -> int:
        """Tokens the LLM reads for this prompt with ``n_video`` visual tokens (image_newline included)."""
        before, after = self.prompt_ids(question, history)
        return self.family.prompt_length(self, n_video, before, after)

    def check_question(
        self, question: str, *, reserve: int = 0, history: Sequence[tuple[str, str]] = (), what: str = "the question"
    ) -> int:
        """Refuse (OptionError) a question whose tokens cannot fit in the LLM's context next to the prompt's own
        tokens (the template, ``history``) and ``reserve`` more (e.g. max_new_tokens); returns its token count.

        Cheap for huge text: a token spans at most ``max_token_chars`` characters, so a question longer than
        context x that many characters is refused without tokenizing it; anything shorter is tokenized (at most
        that many characters). The message names lengths only, never the text. Call it before decoding a video."""
        limit = self.max_positions
        n_chars = len(question)
        if limit is None:
            return -1
        if n_chars > limit * self.max_token_chars:
            at_least = -(-n_chars // self.max_token_chars)
            raise OptionError(
                f"{what} is {n_chars:,} characters long (at least {at_least:,} tokens); the model's context holds "
                f"{limit:,} tokens",
                hint="shorten it: the prompt, the video's tokens and the answer must all fit in the context",
            )
        n_tokens = len(self.tokenizer(question, add_special_tokens=False, split_special_tokens=True).input_ids)
        before, after = self.prompt_ids("", history)
        room = limit - len(before) - len(after) - int(self.newline) - reserve
        if n_tokens > room:
            raise OptionError(
                f"{what} is {n_tokens:,} tokens ({n_chars:,} characters); the model's context of {limit:,} tokens "
                f"leaves it at most {max(room, 0):,} (the rest: the prompt's {len(before) + len(after):,} tokens"
                + (f" and {reserve:,} for the answer)" if reserve else ")"),
                hint="shorten it: the video's tokens must fit in the context too",
            )
        return n_tokens

    @property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for: its longest vocabulary entry (byte-level entries spell one
        byte per character, so this bounds characters too)."""
        if self._max_token_chars is None:
            self._max_token_chars = max((len(t) for t in self.tokenizer.get_vocab()), default=1) or 1
        return self._max_token_chars

    def _prompt_text(self, question: str, history: tuple[tuple[str, str], ...] = ()) -> tuple[str, str]:
        """The prompt's text before and after the video (the pieces of ``_prompt_pieces`` joined)."""
        before, after = self._prompt_pieces(question, history)
        return "".join(t for t, _ in before), "".join(t for t, _ in after)

    def _prompt_pieces(
        self, question: str, history: tuple[tuple[str, str], ...] = ()
    ) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
        """The prompt before and after the video as (text, is_user_text) pieces. llava-hf checkpoints: their own
        chat template. Original-layout checkpoints: LLaVA-NeXT's qwen conversation format, whatever template the
        tokenizer carries (their authors prompt them that way; a Qwen2.5 tokenizer's template has another system
        turn).

        The template is rendered with a mark in place of each user text and cut at the marks, so no user text can
        be read as template structure (a typed ``<video>`` does not move the video, a typed ``<|im_end|>`` ends
        no turn)."""
        import jinja2

        tok = self.tokenizer
        # the conversation's questions in order, the first one carrying the video, answers in between
        texts = [q for q, _ in history] + [question] + [a for _, a in history]
        n_q = len(history) + 1
        marks = [_TEXT_MARK.format(i) for i in range(len(texts))]
        questions, answers = marks[:n_q], marks[n_q:]

        def cut(text: str, video: str) -> tuple[list, list] | None:
            if text.count(video) != 1 or any(text.count(m) != 1 for m in marks):
                return None
            before, after = text.split(video)
            if any(m in before for m in marks):  # every user text comes after the video (the first question)
                return None
            return [(before, False)], _split_marks(after, texts)

        if self.layout == "llava-next":
            return cut("".join(_qwen_conversation(questions, answers, VIDEO_MARK)), VIDEO_MARK)  # type: ignore[return-value]
        video_token = self.family.template_video(tok)
        if tok.chat_template:
            if video_token:
                # llava-hf templates render a structured user turn; the video becomes "<video>\n" before the text.
                conv = _conversation(
                    [{"type": "video"}, {"type": "text", "text": questions[0]}],
                    questions,
                    answers,
                    lambda text: [{"type": "text", "text": text}],
                )
                try:
                    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
                except (TypeError, jinja2.TemplateError):  # a string-only template (str + list): the string form
                    text = ""
                if (pieces := cut(text, video_token)) is not None:
                    return pieces
            # A string-content template: the video as its own line before the first question.
            conv = _conversation(f"{VIDEO_MARK}\n{questions[0]}", questions, answers, lambda text: text)
            try:
                text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
            except jinja2.TemplateError as e:
                raise ModelError(
                    f"model {self.name}: its chat template cannot be rendered: {type(e).__name__}: {e}",
                    hint="fix or remove chat_template in the checkpoint's tokenizer_config.json / chat_template.jinja",
                ) from e
            if (pieces := cut(text, VIDEO_MARK)) is not None:
                return pieces
        # no usable template
        return cut("".join(_qwen_conversation(questions, answers, VIDEO_MARK)), VIDEO_MARK)  # type: ignore[return-value]

    # ------------------------------------------------------------------ generate
    def embed_request(
        self, video: torch.Tensor, question: str, history: Sequence[tuple[str, str]] = ()
    ) -> torch.Tensor:
        """[L, D] input embeddings: text before, the K video tokens (+ image_newline), text after."""
        import torch

        before, after = self.prompt_ids(question, history)
        video = video.reshape(-1, video.shape[-1]).to(self.device, self.dtype)  # [K, D] (also takes [F, T, D])
        parts = [video]
        if self.newline:
            parts.append(self.hf_model.model.image_newline.to(self.device, self.dtype)[None])
        embed = self.hf_model.get_input_embeddings()
        ids = torch.tensor(before + after, dtype=torch.long, device=self.device)
        text = embed(ids)  # one lookup for both sides
        return torch.cat([text[: len(before)], *parts, text[len(before) :]], 0)

    def generate(
        self,
        requests: list[tuple[torch.Tensor, str]],
        gen: GenerationOptions,
        *,
        history: Sequence[tuple[str, str]] = (),
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool | Sequence[bool]] | None = None,
        cache: PromptCache | None = None,
        share_prefix: bool = True,
    ) -> GenerationOutput:
        """Answer several (video tokens [K, D], question) requests in one ``generate`` call (left padding; K may
        differ per row). Several questions about one video: pass the same tensor in several requests; their common
        prefix (the text before the video + the video) is then prefilled once (``share_prefix``; False: every row
        prefills its whole prompt, as before, for comparisons).

        ``history``: earlier (question, answer) turns, the same for every request (a conversation, see
        ``prompt_ids``). ``on_text(piece)``: the first request's answer as it is generated (the pieces add up to
        the answer, leading whitespace dropped). ``should_stop()``: checked after each token; True ends generation
        there, and the answer is what was generated so far (how a chat's Ctrl-C stops one answer); a list of one
        flag per request ends just the rows flagged (a server's client that went away), the others go on. ``cache``
        (one request only): a conversation's KV cache, reused where this prompt starts like the cached one and
        left holding this prompt and its answer.

        The family decides what the prompt is (``families``): LLaVA-OV's rows of embeddings with the kept tokens
        spliced in, or a ``positions`` family's token ids, M-RoPE positions and vision outputs. The LLM step itself
        is ``self.engine``'s (``engines``)."""
        import torch

        if not requests:
            return GenerationOutput(texts=[], n_prompt_tokens=[], prefill_s=0.0, generation_s=0.0)
        if cache is not None and len(requests) != 1:
            raise ValueError("a PromptCache serves one request per generate call")
        t0 = time.perf_counter()
        videos = [video for video, _ in requests]
        with torch.inference_mode():
            if self.family.positions:  # token ids + M-RoPE positions + the vision outputs (families/qwen.py)
                inputs, _ = self.family.generate_inputs(self, requests, history, self._pad_id())
                prompts = Prompts(rows=[], ids=[], videos=videos, n_video=[], t0=t0, inputs=inputs)
            else:
                prompts = Prompts(
                    rows=[self.embed_request(video, question, history) for video, question in requests],
                    ids=[self.prompt_ids(question, history) for _, question in requests],
                    videos=videos,
                    n_video=[video.reshape(-1, video.shape[-1]).shape[0] + int(self.newline) for video in videos],
                    t0=t0,
                )
        return self.engine.generate(
            prompts, gen, on_text=on_text, should_stop=should_stop, cache=cache, share_prefix=share_prefix
        )

    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else self._eos_ids()[0]

    def _eos_ids(self) -> list[int]:
        eos = self.hf_model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids


def _qwen_conversation(questions: list[str], answers: list[str], video: str | None = None) -> tuple[str, ...]:
    """LLaVA-NeXT's qwen conversation format (its ``qwen_1_5`` / ``qwen_2`` templates), split where its ``<image>``
    placeholder stands: the default system turn, the video then a newline then the first question in the first
    user turn, earlier answers as assistant turns, and the opened assistant turn at the end. With ``video``, that
    mark stands where the split is, and one string comes back."""
    before = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    after = f"\n{questions[0]}<|im_end|>\n"
    for answer, later in zip(answers, questions[1:], strict=True):
        after += f"<|im_start|>assistant\n{answer}<|im_end|>\n<|im_start|>user\n{later}<|im_end|>\n"
    after += "<|im_start|>assistant\n"
    return (before + video + after,) if video is not None else (before, after)


def _split_marks(text: str, texts: list[str]) -> list[tuple[str, bool]]:
    """A rendered prompt with ``_TEXT_MARK``s -> (text, is_user_text) pieces, each mark replaced by its text."""
    pieces, pos = [], 0
    for m in _MARK_RE.finditer(text):
        pieces.append((text[pos : m.start()], False))
        pieces.append((texts[int(m.group(1))], True))
        pos = m.end()
    pieces.append((text[pos:], False))
    return [p for p in pieces if p[0]]


def _conversation(first: Any, questions: list[str], answers: list[str], content: Callable[[str], Any]) -> list[dict]:
    """Chat-template messages: the first user turn's content as given (it carries the video), then alternating
    assistant and user turns, each text wrapped by ``content`` (structured parts or a plain string)."""
    conv = [{"role": "user", "content": first}]
    for answer, question in zip(answers, questions[1:], strict=True):
        conv.append({"role": "assistant", "content": content(answer)})
        conv.append({"role": "user", "content": content(question)})
    return conv


def load_model(opts: ModelOptions, on_status: Callable[[str], None] | None = None) -> VisionLanguageModel:
    """Load ``opts.model`` (hub id or directory, either layout) for inference. Raises ModelError.

    Device auto = cuda -> mps -> cpu. With several visible GPUs and device auto/cuda the weights are spread over
    them (``device_map="auto"``, for 72B models); inputs go to the first. Weights only from safetensors unless
    ``allow_pickle``; never ``trust_remote_code``."""
    status = on_status or (lambda _msg: None)
    name, revision = opts.model, opts.revision
    if opts.engine == "vllm":
        from scissor_cli.engines import vllm

        vllm.check_installed()  # before the checkpoint is resolved or any video decoded
    status(f"resolving {name}" + (f"@{revision}" if revision else ""))
    model_dir = resolve_model_dir(name, revision, opts.offline)
    raw = _read_json(model_dir / "config.json") or {}
    from scissor_cli.families import family_of

    family = family_of(raw, name)  # an unknown model_type: one line naming it and the families known
    refuse_position_ids(opts.engine, family.name, family.positions)  # before anything is loaded
    family.check_transformers(name)
    hf_model, tokenizer, kwargs = family.load(opts, model_dir, raw, status)  # LLaVA-OV starts vLLM there first
    vlm = VisionLanguageModel(hf_model, tokenizer, family=family, **kwargs)
    vlm.prompt_ids("")  # a chat template that cannot render fails here, before any video is decoded
    return vlm
