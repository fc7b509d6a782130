"""``answer()``: video -> frames -> features -> SCC -> LLM, with token counts and timings per stage.

Everything the CLI does is three lines of Python::

    vlm = load_model(profile.model)
    answers = answer(vlm, "clip.mp4", "What happens?", profile)
    print(answers[0].answer, answers[0].tokens)

``VideoRun`` is one video through the model: encoded once (``encode_video``), compressed once per setting
(``compress_video``), questions answered in ``generate`` calls and bundled into ``Answer`` records
(``make_answers``). ``answer``, chat, batch, the lmms-eval plugin and the server all run videos through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from scissor_cli.errors import OptionError
from scissor_cli.options import PAPER_EPSILON, PAPER_TAU, CompressionOptions, Profile, SamplingOptions

if TYPE_CHECKING:
    import torch

    from scissor_cli.model import GenerationOutput, VisionLanguageModel
    from scissor_cli.scc import CompressionResult
    from scissor_cli.video import Clip, Decoded, VideoInfo

Status = Callable[[str], None]


def llm_tflops(n_layers: int, n_tokens: int, hidden: int, ffn: int, n_generated: int = 0) -> float:
    """The LLaVA-Scissor paper's LLM FLOPs estimate, in TFLOPs; ``n_generated=0`` gives the prefill alone.

    T·(4kd² + 2k²d + 2kdc) + T·R·((4d² + 2dc) + 2(dk + d(R+1)/2))
    """
    t, k, d, c, r = n_layers, n_tokens, hidden, ffn, n_generated
    prefill = t * (4 * k * d * d + 2 * k * k * d + 2 * k * d * c)
    decode = t * r * ((4 * d * d + 2 * d * c) + 2 * (d * k + d * (r + 1) / 2))
    return (prefill + decode) / 1e12


def _sig(x: float, digits: int = 4) -> float:
    """Round to significant digits: a tiny model's 3e-7 TFLOPs must not print as 0."""
    return float(f"{x:.{digits}g}")


def tflops(vlm: VisionLanguageModel, compressed: CompressedVideo) -> dict[str, float]:
    """The LLM prefill TFLOPs of the video's tokens (``llm_tflops``): before and after compression."""
    return {
        "before": _sig(llm_tflops(vlm.n_layers, compressed.n_original, vlm.hidden_size, vlm.ffn_size)),
        "after": _sig(llm_tflops(vlm.n_layers, compressed.n_final, vlm.hidden_size, vlm.ffn_size)),
    }


@dataclass(frozen=True)
class EncodedVideo:
    """A video's uncompressed visual tokens and where they came from."""

    path: str
    info: VideoInfo
    indices: tuple[int, ...]  # sampled frame numbers
    timestamps: tuple[float, ...]  # seconds
    note: str | None  # e.g. "the video has 5 frames; 32 requested; each used once"
    features: torch.Tensor  # [F, T, D] on the model's device
    decode_s: float
    vision_s: float
    cache_hit: bool
    backend: str  # the decoder that produced the frames ("decord", "torchcodec", "ffmpeg"), or "cache"
    # the model family's layout of ``features`` (families/qwen.py: the token grid, timing); None: [F, T, D]
    layout: Any = None


@dataclass(frozen=True)
class CompressedVideo:
    """SCC's ``CompressionResult`` on a video plus its wall time. Compression off: the identity, every token kept,
    with tau/tau_temporal/epsilon None and no assignment."""

    result: CompressionResult
    compression_s: float
    # what ``generate`` takes when the family has its own form (families.qwen.QwenTokens); None: result.tokens
    kept: Any = None

    # the result's fields under the names the records use (original/final tokens)
    tokens = property(lambda self: self.result.tokens if self.kept is None else self.kept)  # [M, D] for LLaVA-OV
    n_original = property(lambda self: self.result.n_input)  # F*T
    n_spatial = property(lambda self: self.result.n_spatial)
    n_final = property(lambda self: self.result.n_output)  # M
    retention = property(lambda self: self.result.retention)  # M / (F*T)
    tau = property(lambda self: self.result.tau)  # threshold used (None: compression off)
    tau_temporal = property(lambda self: self.result.tau_temporal)
    epsilon = property(lambda self: self.result.epsilon)
    spatial_per_frame = property(lambda self: self.result.spatial_per_frame)  # Qwen: per temporal patch
    assignment = property(lambda self: self.result.assignment)  # [F*T] kept-token index of each original token
    budget = property(lambda self: self.result.budget)  # the budget as a token count (None without one)


@dataclass(frozen=True)
class Answer:
    """One question about one video, with everything needed to trust (and reproduce) the answer."""

    video: str
    question: str
    answer: str
    tokens: dict[str, int]  # visual tokens: original, spatial, final (the newline token not counted)
    retention: float
    tau: float | None
    tau_temporal: float | None
    epsilon: float | None
    frames: int
    timestamps: list[float]
    timings_s: dict[str, float]  # decode, vision, compression, prefill, generation
    tflops: dict[str, float]  # estimated LLM prefill TFLOPs: before, after (paper's formula)
    model: str
    device: str
    dtype: str
    cache_hit: bool
    note: str | None
    profile: dict[str, Any] = field(default_factory=dict)  # the resolved settings
    budget: dict[str, Any] | None = None  # {"retention": r or None, "tokens": count} when a budget chose tau
    # prompt tokens this answer ran through the LLM; those a KV cache served (a chat's earlier turns, a video
    # prefix shared with the questions before it) not counted
    prefill_tokens: int | None = None
    engine: str = "hf"  # what ran the LLM step (engines): "hf" or "vllm"

    def to_dict(self) -> dict[str, Any]:
        """Every field (copies of its dicts and lists), in the order ``ask --json`` and the records have always
        printed; a field added later comes last rather than missing."""
        values = asdict(self)
        values["timestamps"] = list(values["timestamps"])
        return {**{k: values.pop(k) for k in _ANSWER_ORDER}, **values}


# the JSON key order of an Answer: the budget beside the compression settings, prefill_tokens beside the timings
_ANSWER_ORDER = ("video", "question", "answer", "tokens", "retention", "tau", "tau_temporal", "epsilon", "budget",
                 "frames", "timestamps", "timings_s", "tflops", "prefill_tokens", "model", "device", "dtype",
                 "engine", "cache_hit", "note", "profile")  # fmt: skip


def resolve_profile(vlm: VisionLanguageModel | None, profile: Profile) -> Profile:
    """Fill the 'auto' values, so the returned profile says exactly what ran and can run it again.

    tau/epsilon: the checkpoint's own mm_zip_tau/epsilon (``vlm`` None: no checkpoint), else the paper's; with a
    budget tau stays auto (None), since the search chooses it.

    The one seed rule: sampling (temperature > 0) without a seed draws a seed and uses it where ``--seed`` would be
    (generation and SCC's sampled regime), so passing the recorded ``generation.seed`` back as ``--seed`` reproduces
    the answer. A profile resolved once is resolved for good (nothing is drawn again): a caller that wants one seed
    for many videos (a batch run, a chat session) resolves once and hands the result on.
    """
    c, g = profile.compression, profile.generation
    checkpoint_tau = vlm.default_tau if vlm is not None else None
    checkpoint_epsilon = vlm.default_epsilon if vlm is not None else None
    tau = next(v for v in (c.tau, checkpoint_tau, PAPER_TAU) if v is not None)  # 0.0 is a threshold, not "unset"
    if c.budget is not None and c.tau is None:
        tau = None  # a budget searches tau (from search_start); the tau found is the answer's own ``tau``
    epsilon = next(v for v in (c.epsilon, checkpoint_epsilon, PAPER_EPSILON) if v is not None)
    compression = replace(c, tau=tau, epsilon=epsilon)
    drawn = g.with_drawn_seed()
    if drawn.seed != g.seed:
        compression = replace(compression, seed=drawn.seed)
    return replace(profile, compression=compression, generation=drawn)


def search_start(c: CompressionOptions) -> float:
    """The tau SCC starts from: the profile's, else (a budget, tau auto) the paper's."""
    return PAPER_TAU if c.tau is None else c.tau


def model_fingerprint(vlm: VisionLanguageModel) -> str:
    """The model part of a feature-cache key: its name plus the resolved folder and the size and mtime of its
    weights and configs, so re-training into the same folder (or a new Hub commit) is a cache miss; plus what the
    family's preprocessing depends on (Qwen: pixel bounds, patch sizes, mean and std), so changing those is one."""
    import hashlib
    from pathlib import Path

    family = getattr(vlm, "family", None)
    tag = family.cache_tag(vlm) if family is not None else ""
    folder = getattr(vlm, "model_dir", None)
    if folder is None:
        return vlm.name + tag
    parts = [str(Path(folder).resolve())]
    for f in sorted(Path(folder).iterdir()):
        if f.suffix in (".safetensors", ".bin", ".json"):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return f"{vlm.name}|{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()[:16]}{tag}"


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)


def decode_clip(
    vlm: VisionLanguageModel, video: str, s: SamplingOptions, info: VideoInfo, workers: int | None = None
) -> Clip:
    """The frames ``s`` picks, decoded for ``vlm``: frames too large are decoded near its input size, and a video
    whose estimate is over ``s.memory_budget`` is refused before decoding (``video.sample_frames``). ``workers``:
    threads splitting the decode (``--decode-workers``; None: the process's cores)."""
    from scissor_cli import video as video_io

    return video_io.sample_frames(video, n_frames=s.n_frames, fps=s.fps, start=s.start, end=s.end, info=info,
                                  model=video_io.ModelInput.of(vlm), memory_budget=s.memory_budget,
                                  workers=workers)  # fmt: skip


def feature_key(cache: Any, vlm: VisionLanguageModel, info: VideoInfo, indices: Sequence[int],
                fingerprint: str | None = None) -> str:  # fmt: skip
    """The feature-cache key of ``info``'s frames ``indices`` through ``vlm`` (``fingerprint``: its
    ``model_fingerprint``, when the caller keeps it). ``info.path``: the file itself (for stdin, its spooled copy:
    same bytes, same key)."""
    fingerprint = model_fingerprint(vlm) if fingerprint is None else fingerprint
    return cache.key(info.path, indices, fingerprint, vlm.revision, str(vlm.dtype))


def encode_video(
    vlm: VisionLanguageModel,
    video: str,
    profile: Profile,
    on_status: Status | None = None,
    cache: Any = None,
    info: VideoInfo | None = None,
    decoded: Decoded | None = None,
    decode_workers: int | None = None,
) -> EncodedVideo:
    """Probe, plan frames, then features from the cache or from decoding + the vision tower.

    ``cache``: a ``FeatureCache``; None uses the default one unless ``profile.model.cache`` is off. URLs are never
    cached. ``info``: the video's ``probe()`` (or ``opened()``) when the caller already has it; ``video`` then only
    names the video (as typed, e.g. ``-``) and ``info.path`` is what is decoded. ``decoded``: a ``video.Decoded`` clip
    decoded with ``profile.sampling`` by batch's decode-ahead workers; used on a cache miss instead of decoding.
    ``resized``: None, or the frames already resized to the model's input (uint8 [F, 3, S, S]; the clip then
    carries no frames). ``decode_workers``: threads splitting a decode done here (None: the process's cores).
    """
    from scissor_cli import video as video_io

    s = profile.sampling
    if info is None:
        info = decoded.clip.info if decoded is not None else video_io.probe(video)
    plan = video_io.plan_frames(info, n_frames=s.n_frames, fps=s.fps, start=s.start, end=s.end)
    if video_io.is_url(info.path):
        cache = None  # a URL's content can change, and hashing it would mean downloading it all
    elif cache is None and profile.model.cache:
        from scissor_cli.cache import FeatureCache

        cache = FeatureCache()
    key = None
    if cache is not None:
        key = feature_key(cache, vlm, info, plan.indices)
        family = getattr(vlm, "family", None)
        if family is not None:  # None: a stand-in model (tests)
            expected = family.feature_shape(vlm, len(plan.indices))
        else:
            expected = (len(plan.indices), vlm.tokens_per_frame, vlm.hidden_size)
        cached = cache.get(key, shape=expected, dtype=vlm.dtype)  # a bad entry: deleted, warned, a miss
        if cached is not None:
            features = cached.to(device=vlm.device, dtype=vlm.dtype)
            # a file that ended early cached fewer frames than planned
            n = min(family.frames_covered(features.shape[0]) if family else features.shape[0], len(plan.indices))
            indices, timestamps = tuple(plan.indices[:n]), tuple(plan.timestamps[:n])
            note = plan.note
            if n < len(plan.indices):  # the same words sample_frames used when it decoded the file
                short = (
                    f"only {n} of {len(plan.indices)} planned frames could be decoded "
                    "(the file ends early or is corrupt)"
                )
                note = f"{note}; {short}" if note else short
            return EncodedVideo(path=str(video), info=info, indices=indices, timestamps=timestamps, note=note,
                                features=features, decode_s=0.0, vision_s=0.0, cache_hit=True, backend="cache",
                                layout=_layout(vlm, features, indices, info))  # fmt: skip

    if decoded is not None:
        clip, decode_s, resized = decoded  # decode_s: the worker's decode (+ resize) time, off the critical path
    else:
        if on_status:
            on_status(f"decoding {len(plan.indices)} frames")
        t0 = time.perf_counter()
        clip = decode_clip(vlm, video, s, info, workers=decode_workers)
        decode_s = time.perf_counter() - t0
        resized = None

    if on_status:
        on_status(f"vision tower on {len(clip.indices)} frames")
    t0 = time.perf_counter()
    on_progress = getattr(on_status, "progress", None)  # render.stages() draws a bar from it
    kwargs = {} if on_progress is None else {"on_progress": on_progress}
    if resized is not None:
        kwargs["resized"] = resized
    features = vlm.encode(clip.frames, **kwargs)  # [F, T, D]
    _sync(vlm.device)
    vision_s = time.perf_counter() - t0
    if cache is not None and key is not None:
        cache.put(key, features)
    return EncodedVideo(
        path=str(video),
        info=clip.info,
        indices=tuple(clip.indices),
        timestamps=tuple(clip.timestamps),
        note=clip.note,
        features=features,
        decode_s=decode_s,
        vision_s=vision_s,
        cache_hit=False,
        backend=clip.backend,
        layout=_layout(vlm, features, clip.indices, clip.info),
    )


def _layout(vlm: VisionLanguageModel, features: torch.Tensor, indices, info) -> Any:
    """The family's layout of an encoded video (None for LLaVA-OV and stand-in models)."""
    family = getattr(vlm, "family", None)
    return None if family is None else family.video_layout(vlm, features, indices, info)


def scc_features(encoded: EncodedVideo) -> torch.Tensor:
    """The [F, T, D] tokens SCC compares (Qwen: per temporal patch, without the DeepStack features)."""
    layout = getattr(encoded, "layout", None)
    return encoded.features if layout is None else layout.scc_input(encoded.features)[0]


def compress_video(encoded: EncodedVideo, profile: Profile) -> CompressedVideo:
    """SCC on the video's tokens with the profile's (resolved) settings; identity when compression is off."""
    import torch

    layout = getattr(encoded, "layout", None)
    features, carry = (encoded.features, None) if layout is None else layout.scc_input(encoded.features)
    n_frames, n_per_frame = features.shape[0], features.shape[1]  # Qwen: temporal patches, tokens in each
    n_original = n_frames * n_per_frame
    c = profile.compression
    if not c.enabled:
        from scissor_cli.scc import CompressionResult

        identity = CompressionResult(tokens=features.reshape(n_original, features.shape[-1]), n_input=n_original,
                                     n_spatial=n_original, n_output=n_original, tau=None, tau_temporal=None,
                                     epsilon=None, budget=None, spatial_per_frame=[n_per_frame] * n_frames,
                                     assignment=None,
                                     representative=torch.arange(n_original, device=features.device))  # fmt: skip
        kept = None if layout is None else layout.kept(None, encoded.features)
        return CompressedVideo(result=identity, compression_s=0.0, kept=kept)

    from scissor_cli.scc import compress

    generator = torch.Generator(device=features.device).manual_seed(c.seed)
    t0 = time.perf_counter()
    out = compress(
        features,
        tau=search_start(c),
        epsilon=c.epsilon,
        tau_temporal=c.tau_temporal,
        budget=c.budget,
        generator=generator,
        carry=carry,
    )
    _sync(features.device)
    kept = None if layout is None else layout.kept(out, encoded.features)
    return CompressedVideo(result=out, compression_s=time.perf_counter() - t0, kept=kept)


def budget_record(compressed: CompressedVideo, profile: Profile) -> dict[str, Any] | None:
    """The budget asked for (a ratio, or None for a count) and its token count, or None without a budget."""
    if compressed.budget is None:
        return None
    return {"retention": profile.compression.retention, "tokens": compressed.budget}


def make_answers(
    vlm: VisionLanguageModel,
    encoded: EncodedVideo,
    compressed: CompressedVideo,
    questions: Sequence[str],
    generated: GenerationOutput,
    profile: Profile,
) -> list[Answer]:
    """Bundle the answers of one ``generate`` call on one video with the stats that explain them."""
    before_after = tflops(vlm, compressed)
    timings = {
        "decode": round(encoded.decode_s, 4),
        "vision": round(encoded.vision_s, 4),
        "compression": round(compressed.compression_s, 4),
        "prefill": round(generated.prefill_s, 4),
        "generation": round(generated.generation_s, 4),
    }
    settings = profile.to_dict()
    budget = budget_record(compressed, profile)
    prefill = getattr(generated, "n_prefill_tokens", None) or generated.n_prompt_tokens
    engine = getattr(getattr(vlm, "engine", None), "name", "hf")  # test doubles of the model carry none
    return [
        Answer(
            video=encoded.path,
            question=question,
            answer=text,
            tokens={"original": compressed.n_original, "spatial": compressed.n_spatial, "final": compressed.n_final},
            retention=compressed.retention,
            tau=compressed.tau,
            tau_temporal=compressed.tau_temporal,
            epsilon=compressed.epsilon,
            frames=len(encoded.indices),
            timestamps=[round(t, 3) for t in encoded.timestamps],
            timings_s=timings,
            tflops=before_after,
            model=vlm.name,
            device=str(vlm.device),
            dtype=str(vlm.dtype).replace("torch.", ""),
            cache_hit=encoded.cache_hit,
            note=encoded.note,
            profile=settings,
            budget=budget,
            prefill_tokens=n_prefill,
            engine=engine,
        )
        for question, text, n_prefill in zip(questions, generated.texts, prefill, strict=True)
    ]


def check_context(vlm: VisionLanguageModel, n_video: int, question: str, history: Sequence[tuple[str, str]],
                  reserve: int, *, what: str, hint: str) -> None:  # fmt: skip
    """OptionError when ``what``'s prompt (``n_video`` visual tokens, ``history``'s turns, ``question``) plus up to
    ``reserve`` answer tokens would not fit in the LLM's context: chat's and the server's check before a turn."""
    limit = vlm.max_positions
    n_prompt = vlm.prompt_length(n_video, question, history)
    if limit is not None and n_prompt + reserve > limit:
        raise OptionError(
            f"{what} would not fit in the model's context: {n_prompt:,} prompt tokens + up to {reserve:,} for the "
            f"answer > {limit:,}",
            hint=hint,
        )


def output_rows(generated: GenerationOutput, start: int, stop: int) -> GenerationOutput:
    """Rows ``start:stop`` of a batched ``generate`` output (its per-row lists sliced, batch-wide values kept)."""
    n_rows = len(generated.texts)
    values = {}
    for f in fields(generated):
        v = getattr(generated, f.name)
        values[f.name] = v[start:stop] if isinstance(v, list) and len(v) == n_rows else v
    return replace(generated, **values)


class VideoRun:
    """One video through one model, as faster-whisper's ``BatchedInferencePipeline`` is many segments through one:
    decoded and encoded once (``open``, the feature cache as in ``encode_video``), compressed once per compression
    setting (``compressed``, cached), questions answered in ``generate`` calls of up to ``batch_size`` rows
    (``answer``), each call's rows bundled into ``Answer`` records (``answers``).

    The profile is resolved once, when the run starts (``resolve_profile``: the one seed rule), and every profile
    handed to a method is resolved against it: sampling without a seed takes the run's seed (never a second draw),
    so SCC and every sampled answer of the run share the seed its records carry. The run talks to the model only
    through ``encode`` (in ``encode_video``), ``generate`` and its size attributes: a model family or an engine
    plugs in below it, once.
    """

    def __init__(self, vlm: VisionLanguageModel, encoded: EncodedVideo, profile: Profile):
        self.vlm, self.encoded = vlm, encoded
        self.profile = resolve_profile(vlm, profile)
        self._compressed: dict[CompressionOptions, CompressedVideo] = {}

    @classmethod
    def open(cls, vlm: VisionLanguageModel, video: str, profile: Profile, **encode: Any) -> VideoRun:
        """Resolve ``profile``, then encode ``video`` with it; ``encode``: ``encode_video``'s keyword arguments
        (``on_status``, ``cache``, ``info``, ``decoded``, ``decode_workers``)."""
        profile = resolve_profile(vlm, profile)
        return cls(vlm, encode_video(vlm, video, profile, **encode), profile)

    def sharing(self, profile: Profile, encoded: EncodedVideo | None = None) -> VideoRun:
        """Another run of this video at ``profile`` that shares this one's features and its compressions (SCC of a
        setting either run has done is not done again): how a server hands one video to many requests.
        ``encoded``: the features as the new run reports them (default: this run's, the same object)."""
        other = VideoRun(self.vlm, encoded if encoded is not None else self.encoded, profile)
        other._compressed = self._compressed
        return other

    def nbytes(self) -> int:
        """Bytes of the tensors this run holds: its features and every compression of them."""
        # result.tokens, not tokens: a family's kept tokens (Qwen) hold these tensors and its DeepStack ones
        held = [self.encoded.features, *(c.result.tokens for c in self._compressed.values())]
        held += [c.result.carried for c in self._compressed.values() if c.result.carried is not None]
        return sum(t.numel() * t.element_size() for t in held)

    def resolved(self, profile: Profile | None = None) -> Profile:
        """``profile`` (None: the run's) resolved for this run: tau/epsilon as ``resolve_profile`` fills them, and
        sampling without a seed given the run's SCC seed, the one its tokens are compressed with."""
        if profile is None or profile is self.profile:
            return self.profile
        g = profile.generation
        if g.temperature > 0 and g.seed is None:
            seed = self.profile.compression.seed  # the drawn seed when the run's own profile samples
            profile = replace(profile, generation=replace(g, seed=seed),
                              compression=replace(profile.compression, seed=seed))  # fmt: skip
        return resolve_profile(self.vlm, profile)

    def compressed(self, profile: Profile | None = None) -> CompressedVideo:
        """The video's tokens after SCC with ``profile``'s compression (None: the run's); each setting runs once."""
        profile = self.resolved(profile)
        key = profile.compression
        if key not in self._compressed:
            self._compressed[key] = compress_video(self.encoded, profile)
        return self._compressed[key]

    def generate(
        self, questions: Sequence[str], profile: Profile | None = None, **generate_kwargs: Any
    ) -> tuple[list[Answer], GenerationOutput]:
        """One ``generate`` call, a row per question; ``generate_kwargs`` go to the model (``history``,
        ``on_text``, ``should_stop``, ``cache``). Returns the answers and the call's output."""
        profile = self.resolved(profile)
        compressed = self.compressed(profile)
        generated = self.vlm.generate([(compressed.tokens, q) for q in questions], profile.generation,
                                      **generate_kwargs)  # fmt: skip
        return self.answers(questions, generated, profile), generated

    def answer(
        self, questions: Sequence[str], profile: Profile | None = None, batch_size: int | None = None
    ) -> list[Answer]:
        """Every question, ``batch_size`` per ``generate`` call (None: all in one)."""
        questions = list(questions)
        size = batch_size or max(len(questions), 1)
        out: list[Answer] = []
        for at in range(0, len(questions), size):
            out += self.generate(questions[at : at + size], profile)[0]
        return out

    def answers(
        self, questions: Sequence[str], generated: GenerationOutput, profile: Profile | None = None
    ) -> list[Answer]:
        """``make_answers`` for rows of this video at ``profile``'s compression (``generated``: those rows only)."""
        profile = self.resolved(profile)
        return make_answers(self.vlm, self.encoded, self.compressed(profile), questions, generated, profile)


def answer(
    vlm: VisionLanguageModel,
    video: str,
    questions: str | Sequence[str],
    profile: Profile,
    on_status: Status | None = None,
    info: VideoInfo | None = None,
    decode_workers: int | None = None,
    cache: Any = None,
) -> list[Answer]:
    """Answer one or more questions about one video; the video is decoded, encoded and compressed once.

    ``video``: a file, an http(s) URL or ``-`` (stdin). ``profile.generation.seed`` of the answers is the seed used
    (drawn when sampling without one). ``decode_workers``: threads splitting the decode (None: the cores).
    ``cache``: the ``FeatureCache`` (None: the default folder's, unless ``profile.model.cache`` is off)."""
    if info is None:
        from scissor_cli import video as video_io

        with video_io.opened(video) as info:
            return answer(vlm, video, questions, profile, on_status=on_status, info=info,
                          decode_workers=decode_workers, cache=cache)  # fmt: skip
    questions = [questions] if isinstance(questions, str) else list(questions)
    for i, question in enumerate(questions, 1):  # before any decoding: a 100 MB question fails in milliseconds
        what = "the question" if len(questions) == 1 else f"question {i}"
        vlm.check_question(question, reserve=profile.generation.max_new_tokens, what=what)
    run = VideoRun.open(vlm, video, profile, on_status=on_status, info=info, decode_workers=decode_workers,
                        cache=cache)  # fmt: skip
    compressed = run.compressed()
    if on_status:
        n = len(questions)
        on_status(f"generating {'an answer' if n == 1 else f'{n} answers'} from {compressed.n_final} visual tokens")
    return run.answer(questions)


@dataclass(frozen=True)
class Inspection:
    """What ``scissor inspect`` reports: the video, the frame plan and (with a model) what SCC does to it."""

    video: str  # as given (a path, a URL, or - for stdin)
    info: VideoInfo
    indices: tuple[int, ...]
    timestamps: tuple[float, ...]
    note: str | None
    profile: dict[str, Any]
    encoded: EncodedVideo | None = None
    compressed: CompressedVideo | None = None
    sweep: list[tuple[float | None, int, int]] | None = None  # (tau, n_spatial, n_final); tau None: uncompressed
    sweep_levels: list[dict] | None = None  # a budget sweep: each entry's level ({"retention": 0.1}); None: taus
    tflops: dict[str, float] | None = None
    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    budget: dict[str, Any] | None = None  # as in Answer

    def to_dict(self) -> dict[str, Any]:
        info = self.info
        out: dict[str, Any] = {
            "video": self.video,
            "info": {
                "duration_s": info.duration,
                "fps": info.fps,
                "n_frames": info.n_frames,
                "width": info.width,
                "height": info.height,
                "rotation": info.rotation,
                "codec": info.codec,
                "backend": info.backend,
                "is_image": info.is_image,
            },
            "frames": len(self.indices),
            "indices": list(self.indices),
            "timestamps": [round(t, 3) for t in self.timestamps],
            "note": self.note,
            "profile": self.profile,
        }
        if self.compressed is not None and self.encoded is not None:
            c = self.compressed
            out.update(
                {
                    "model": self.model,
                    "device": self.device,
                    "dtype": self.dtype,
                    "tokens": {"original": c.n_original, "spatial": c.n_spatial, "final": c.n_final},
                    "spatial_per_frame": c.spatial_per_frame,
                    "retention": c.retention,
                    "tau": c.tau,
                    "tau_temporal": c.tau_temporal,
                    "epsilon": c.epsilon,
                    "budget": self.budget,
                    "tflops": self.tflops,
                    "timings_s": {
                        "decode": round(self.encoded.decode_s, 4),
                        "vision": round(self.encoded.vision_s, 4),
                        "compression": round(c.compression_s, 4),
                    },
                    "cache_hit": self.encoded.cache_hit,
                }
            )
        if self.sweep is not None:
            out["sweep"] = [
                {"tau": t, "spatial": s, "final": f, "retention": f / self.compressed.n_original}
                for t, s, f in self.sweep
            ]
            for entry, level in zip(out["sweep"], self.sweep_levels or [], strict=False):
                entry["level"] = level
        return out


def inspect_video(
    vlm: VisionLanguageModel | None,
    video: str,
    profile: Profile,
    sweep_taus: Sequence[float] | None = None,
    on_status: Status | None = None,
    info: VideoInfo | None = None,
    sweep_budgets: Sequence[float | int] | None = None,
    decode_workers: int | None = None,
    cache: Any = None,
) -> Inspection:
    """Report the frame plan; with a model, also the vision tower + SCC (no LLM) and an optional sweep over tau
    values (``sweep_taus``) or budgets (``sweep_budgets``: retention fractions as floats, 1.0 = uncompressed, or
    token counts as ints; the searched tau is reported), all from the one encoding. ``decode_workers``: threads
    splitting the decode (None: the cores). ``cache``: as in ``answer``."""
    from scissor_cli import video as video_io

    if info is None:
        with video_io.opened(video) as info:
            return inspect_video(vlm, video, profile, sweep_taus=sweep_taus, on_status=on_status, info=info,
                                 sweep_budgets=sweep_budgets, decode_workers=decode_workers, cache=cache)  # fmt: skip
    profile = resolve_profile(vlm, profile)
    s = profile.sampling
    plan = video_io.plan_frames(info, n_frames=s.n_frames, fps=s.fps, start=s.start, end=s.end)
    if vlm is None:
        return Inspection(video=str(video), info=info, indices=tuple(plan.indices), timestamps=tuple(plan.timestamps),
                          note=plan.note, profile=profile.to_dict())  # fmt: skip
    encoded = encode_video(vlm, video, profile, on_status=on_status, info=info, decode_workers=decode_workers,
                           cache=cache)  # fmt: skip
    compressed = compress_video(encoded, profile)
    sweep, sweep_levels = None, None
    if sweep_budgets:
        import torch

        from scissor_cli.scc import compress

        if on_status:
            on_status(f"sweeping {len(sweep_budgets)} budgets")
        c = profile.compression
        n_original = compressed.n_original
        sweep, sweep_levels = [], []
        for budget in sweep_budgets:
            is_count = isinstance(budget, int) and not isinstance(budget, bool)
            sweep_levels.append({"tokens": budget} if is_count else {"retention": float(budget)})
            if not is_count and budget == 1:
                sweep.append((None, n_original, n_original))  # every token: what batch's retention 1 sends
                continue
            generator = torch.Generator(device=encoded.features.device).manual_seed(c.seed)
            out = compress(scc_features(encoded), tau=search_start(c), epsilon=c.epsilon, tau_temporal=c.tau_temporal,
                           budget=budget, generator=generator)  # fmt: skip
            sweep.append((float(out.tau), int(out.n_spatial), int(out.n_output)))
    elif sweep_taus:
        import torch

        from scissor_cli.scc import retention_sweep

        if on_status:
            on_status(f"sweeping {len(sweep_taus)} tau values")
        generator = torch.Generator(device=encoded.features.device).manual_seed(profile.compression.seed)
        sweep = [
            (float(t), int(a), int(b))
            for t, a, b in retention_sweep(
                scc_features(encoded),
                list(sweep_taus),
                epsilon=profile.compression.epsilon,
                generator=generator,
                tau_temporal=profile.compression.tau_temporal,
            )
        ]
    return Inspection(
        video=str(video),
        info=encoded.info,
        indices=encoded.indices,
        timestamps=encoded.timestamps,
        note=encoded.note,
        profile=profile.to_dict(),
        encoded=encoded,
        compressed=compressed,
        sweep=sweep,
        sweep_levels=sweep_levels,
        tflops=tflops(vlm, compressed),
        model=vlm.name,
        device=str(vlm.device),
        dtype=str(vlm.dtype).replace("torch.", ""),
        budget=budget_record(compressed, profile),
    )
