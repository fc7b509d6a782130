"""A conversation about one video (``scissor chat``): the model loaded once, the video decoded and encoded once.

``ChatSession`` keeps the video's uncompressed features in memory, so changing the compression (``/retention``,
``/tokens``, ``/tau``, ``/off``) re-runs SCC only, never the vision tower; ``/frames`` and ``/video`` decode and
encode again because the frames themselves change. Earlier questions and answers stay in the prompt (the video once,
in the first user turn; ``model.prompt_ids``), and every turn is checked against the LLM's context first.

No printing here: ``handle`` turns one input line (a question or a /command) into a reply object, and the CLI hands
that to ``render``.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from scissor_cli.errors import ManifestError, OptionError
from scissor_cli.options import Profile
from scissor_cli.pipeline import (
    Answer,
    CompressedVideo,
    Status,
    VideoRun,
    budget_record,
    check_context,
    resolve_profile,
    tflops,
)
from scissor_cli.settings import Overrides, apply, spelled

if TYPE_CHECKING:
    from scissor_cli.model import VisionLanguageModel
    from scissor_cli.video import VideoInfo


# (usage, what it does): /help lists these, and the README's table says the same
COMMANDS = (
    ("/retention R", "keep at most this fraction of the visual tokens, e.g. 0.1 (SCC again, no vision tower)"),
    ("/tokens N", "keep at most N visual tokens (SCC again, no vision tower)"),
    ("/tau T", "compress with this similarity threshold instead of a budget (SCC again)"),
    ("/off", "send every visual token to the LLM"),
    ("/frames N", "sample N frames (decodes and encodes the video again)"),
    ("/stats", "the video's compression stats and how full the context is"),
    ("/reset", "forget the conversation (the video stays)"),
    ("/video FILE", "talk about another video (the conversation starts over)"),
    ("/save FILE.jsonl", "write every turn so far, with its stats, one JSON object per line"),
    ("/help", "this list"),
    ("/quit", "end the session (also /exit, or Ctrl-D)"),
)


@dataclass(frozen=True)
class Stats:
    """What the video looks like to the LLM now: after it was prepared, after a change, or on /stats."""

    video: str
    frames: int
    note: str | None
    tokens: dict[str, int]  # original, spatial, final
    retention: float
    tau: float | None  # None: compression off
    tau_temporal: float | None
    epsilon: float | None
    budget: dict[str, Any] | None  # as in Answer
    tflops: dict[str, float]  # estimated LLM prefill TFLOPs of the visual tokens: before, after
    timings_s: dict[str, float]  # load, decode, vision, compression of the last preparation
    cache_hit: bool
    model: str
    device: str
    dtype: str
    n_history: int  # turns in the prompt (0 with --no-history or after /reset)
    n_context: int  # tokens the next prompt holds before its question (video + earlier turns)
    max_context: int | None  # the LLM's context length


@dataclass(frozen=True)
class Turn:
    """One answered question."""

    n: int  # 1-based, counting every answered question of the session
    answer: Answer  # the same record as ``scissor ask`` (timings_s: this turn's costs, see ``ChatSession.ask``)
    n_prompt_tokens: int  # what the LLM read: text + visual tokens (+ image_newline)
    n_new_tokens: int
    max_context: int | None
    stopped: bool = False  # Ctrl-C ended the answer early

    def to_dict(self) -> dict[str, Any]:
        """``ask --json``'s fields plus ``turn``."""
        return {**self.answer.to_dict(), "turn": self.n}


@dataclass(frozen=True)
class Change:
    """A /command that changed the video's tokens: the stats before and after."""

    command: str
    before: Stats
    after: Stats
    vision_tower: bool  # the frames were decoded and encoded again (/frames, /video)
    n_forgotten: int = 0  # conversation turns dropped (/video starts over)


@dataclass(frozen=True)
class Reset:
    n_forgotten: int


@dataclass(frozen=True)
class Saved:
    path: str
    n_turns: int


@dataclass(frozen=True)
class Help:
    commands: tuple[tuple[str, str], ...] = COMMANDS


@dataclass(frozen=True)
class Quit:
    pass


Reply = Turn | Change | Stats | Reset | Saved | Help | Quit


@dataclass
class _Prepared:
    """The current video: its run (features kept for re-compression) and the compression in use."""

    run: VideoRun
    compressed: CompressedVideo
    unreported: dict[str, float] = field(default_factory=dict)  # preparation costs not yet shown on a turn


class ChatSession:
    """One video, one model, a conversation. ``open`` first; then ``ask`` and the command methods.

    ``history=False`` answers every question on its own, with exactly ``scissor ask``'s prompt. ``kv_cache``: keep
    the LLM's KV cache between turns, so a turn prefills only what is new (``model.PromptCache``); False prefills
    the whole conversation every turn (the same greedy answers, slower)."""

    def __init__(
        self,
        vlm: VisionLanguageModel,
        profile: Profile,
        history: bool = True,
        load_s: float = 0.0,
        kv_cache: bool = True,
        decode_workers: int | None = None,
    ):
        from scissor_cli.model import PromptCache

        self.vlm = vlm
        self._kv = PromptCache() if kv_cache else None
        resolved = resolve_profile(vlm, profile)
        # the profile as the user set it (tau "auto" stays None), with the seeds resolve_profile drew kept, so
        # re-resolving after a /command changes only what the command changed
        self._flags = replace(
            profile,
            generation=resolved.generation,
            compression=replace(profile.compression, seed=resolved.compression.seed),
        )
        self.profile = resolved
        self.keep_history = history
        self.load_s = load_s
        self.decode_workers = decode_workers  # threads splitting a decode (open, /frames, /video); None: the cores
        self.history: list[tuple[str, str]] = []  # (question, answer) pairs in the prompt
        self.turns: list[Turn] = []  # the transcript: every turn, also those /reset dropped from the prompt
        self._video: _Prepared | None = None
        self._stop = threading.Event()
        self.generating = False

    # ------------------------------------------------------------------ the video
    def open(self, video: str, on_status: Status | None = None, info: VideoInfo | None = None) -> Stats:
        """Probe (unless ``info`` is given), decode, encode (or read the feature cache) and compress ``video``;
        the conversation starts over."""
        self._video = self._prepare(video, self.profile, on_status, info)
        self.history.clear()
        return self.stats()

    def _prepare(
        self, video: str, profile: Profile, on_status: Status | None, info: VideoInfo | None = None
    ) -> _Prepared:
        if info is None:
            info = probe_video(video)
        run = VideoRun.open(self.vlm, video, profile, on_status=on_status, info=info,
                            decode_workers=self.decode_workers)  # fmt: skip
        compressed = run.compressed()
        e = run.encoded
        costs = {"decode": e.decode_s, "vision": e.vision_s, "compression": compressed.compression_s}
        return _Prepared(run, compressed, costs)

    @property
    def prepared(self) -> _Prepared:
        if self._video is None:
            raise RuntimeError("ChatSession.open() must come first")
        return self._video

    def stats(self) -> Stats:
        v = self.prepared
        e, c, vlm = v.run.encoded, v.compressed, self.vlm
        history = self.history if self.keep_history else []
        return Stats(
            video=e.path,
            frames=len(e.indices),
            note=e.note,
            tokens={"original": c.n_original, "spatial": c.n_spatial, "final": c.n_final},
            retention=c.retention,
            tau=c.tau,
            tau_temporal=c.tau_temporal,
            epsilon=c.epsilon,
            budget=budget_record(c, self.profile),
            tflops=tflops(vlm, c),
            timings_s={
                "load": round(self.load_s, 4),
                "decode": round(e.decode_s, 4),
                "vision": round(e.vision_s, 4),
                "compression": round(c.compression_s, 4),
            },
            cache_hit=e.cache_hit,
            model=vlm.name,
            device=str(vlm.device),
            dtype=str(vlm.dtype).replace("torch.", ""),
            n_history=len(history),
            n_context=vlm.prompt_length(c.n_final, "", history),
            max_context=vlm.max_positions,
        )

    def _apply(self, command: str, change: Overrides, video: str | None = None, on_status: Status | None = None):
        """``change`` over the session's settings by the flags' rules (``settings.apply``; errors name the
        /command), then tau/epsilon "auto" filled as ``ask`` fills them."""
        try:
            flags = apply(self._flags, change)
        except OptionError as e:
            raise spelled(e, "chat") from e
        profile = resolve_profile(self.vlm, flags)
        before = self.stats()
        old = self.prepared
        if video is not None or flags.sampling != self._flags.sampling:
            prepared = self._prepare(video or old.run.encoded.path, profile, on_status)
            reencoded = True
        else:  # the features in memory, compressed again (once per setting): no decoding, no vision tower
            compressed = old.run.compressed(profile)
            prepared = _Prepared(old.run, compressed, {**old.unreported, "compression": compressed.compression_s})
            reencoded = False
        # state changes only once everything above succeeded: a bad value or file leaves the session as it was
        self._flags, self.profile, self._video = flags, profile, prepared
        n_forgotten = 0
        if video is not None:
            n_forgotten = len(self.history)
            self.history.clear()
        return Change(command, before, self.stats(), reencoded, n_forgotten)

    def set_compression(self, command: str, **changes: Any) -> Change:
        """``/retention``, ``/tokens``, ``/tau`` (``changes``: one of them), ``/off`` (none): the flags' rule (a
        budget searches tau; a threshold replaces the budget; any of them turns compression back on)."""
        return self._apply(command, Overrides(**changes) if changes else Overrides(no_compress=True))

    def set_frames(self, n_frames: int, on_status: Status | None = None) -> Change:
        return self._apply(f"/frames {n_frames}", Overrides(frames=n_frames), on_status=on_status)

    def set_video(self, video: str, on_status: Status | None = None) -> Change:
        return self._apply(f"/video {video}", Overrides(), video=video, on_status=on_status)

    # ------------------------------------------------------------------ the conversation
    def reset(self) -> Reset:
        n = len(self.history)
        self.history.clear()
        return Reset(n)

    def request_stop(self) -> None:
        """Ends the answer being generated after its current token (safe from a signal handler)."""
        self._stop.set()

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def ask(self, question: str, on_text: Callable[[str], None] | None = None) -> Turn:
        """Answer ``question`` with the earlier turns in the prompt (none with ``history=False``).

        Raises OptionError, before any generation, when prompt + ``max_new_tokens`` would not fit in the LLM's
        context. ``timings_s`` of the turn: decode, vision and compression are the preparation this turn is the
        first to use (0 on later turns), prefill and generation its own, load the session's model load, total
        this turn's wall time."""
        t0 = time.perf_counter()
        v, vlm, gen = self.prepared, self.vlm, self.profile.generation
        history = list(self.history) if self.keep_history else []
        # the question alone first (cheap for huge text); then, with the earlier turns, the overflow check below
        vlm.check_question(question, reserve=gen.max_new_tokens)
        check_context(vlm, v.compressed.n_final, question, history, gen.max_new_tokens, what="this turn",
                      hint=self._overflow_hint(len(history)))  # fmt: skip
        self._stop.clear()
        self.generating = True
        try:
            [answer], generated = v.run.generate(
                [question],
                self.profile,
                history=history,
                on_text=on_text,
                should_stop=self._stop.is_set,
                **({"cache": self._kv} if self._kv is not None else {}),
            )
        finally:
            self.generating = False
        stopped = self._stop.is_set()
        self._stop.clear()
        timings = {
            "decode": round(v.unreported.get("decode", 0.0), 4),
            "vision": round(v.unreported.get("vision", 0.0), 4),
            "compression": round(v.unreported.get("compression", 0.0), 4),
            "prefill": round(generated.prefill_s, 4),
            "generation": round(generated.generation_s, 4),
            "load": round(self.load_s, 4),
            "total": round(time.perf_counter() - t0, 4),
        }
        v.unreported = {}
        turn = Turn(
            n=len(self.turns) + 1,
            answer=replace(answer, timings_s=timings),
            n_prompt_tokens=generated.n_prompt_tokens[0],
            n_new_tokens=generated.n_new_tokens[0],
            max_context=vlm.max_positions,
            stopped=stopped,
        )
        self.turns.append(turn)
        if self.keep_history and answer.answer:  # an answer stopped before its first token leaves no turn behind
            self.history.append((question, answer.answer))
        return turn

    @staticmethod
    def _overflow_hint(n_history: int) -> str:
        ways = ["fewer visual tokens (/retention 0.1, /tokens N or /frames N)", "a smaller --max-new-tokens"]
        if n_history:
            ways.insert(0, f"/reset to forget the {n_history} earlier turn{'s' if n_history != 1 else ''}")
        return "; or ".join(ways)

    def save(self, path: str) -> Saved:
        """Every turn so far (``ask --json``'s fields plus ``turn``) as JSONL, replacing ``path`` in one step."""
        target = os.path.abspath(os.path.expanduser(path))
        folder = os.path.dirname(target)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".scissor-chat-", dir=folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    for turn in self.turns:
                        f.write(json.dumps(turn.to_dict(), ensure_ascii=False) + "\n")
                os.replace(tmp, target)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            raise ManifestError(
                f"cannot write the transcript to {path}: {e.strerror or e}",
                hint="give a file in an existing, writable folder, e.g. /save chat.jsonl",
            ) from e
        return Saved(path, len(self.turns))


def probe_video(video: str) -> VideoInfo:
    """``video.probe`` for a chat's video: a file or URL, never stdin (stdin carries the questions)."""
    from scissor_cli import video as video_io

    if str(video) == video_io.STDIN:
        raise OptionError(
            "chat reads its questions from stdin, so the video cannot come from stdin (-) too",
            hint="save the video to a file and pass its path",
        )
    return video_io.probe(video)


# ---------------------------------------------------------------------------------------------------- input lines
def _number(command: str, arg: str, kind: type) -> Any:
    try:
        return kind(arg)
    except ValueError:
        example = {"/retention": "0.1", "/tokens": "500", "/tau": "0.85", "/frames": "16"}[command]
        what = "a number" if kind is float else "a whole number"
        raise OptionError(f"{command} needs {what}, got {arg!r}", hint=f"e.g. {command} {example}") from None


def handle(
    session: ChatSession,
    line: str,
    on_text: Callable[[str], None] | None = None,
    on_status: Status | None = None,
) -> Reply | None:
    """One input line: a question (answered) or a /command (done). None for a blank line. Raises ScissorError
    for a bad command or value, a file that cannot be read or written, or a turn that would overflow the context;
    the session is unchanged then."""
    text = line.strip()
    if not text:
        return None
    if not text.startswith("/"):
        return session.ask(text, on_text=on_text)
    command, _, arg = text.partition(" ")
    command, arg = command.lower(), arg.strip()
    takes_arg = {"/retention": float, "/tokens": int, "/tau": float, "/frames": int, "/video": str, "/save": str}
    if command in takes_arg and not arg:
        usage = next(u for u, _ in COMMANDS if u.split()[0] == command)
        raise OptionError(f"{command} needs a value", hint=f"usage: {usage}")
    if command not in takes_arg and arg and command in {u.split()[0] for u, _ in COMMANDS} | {"/exit"}:
        raise OptionError(f"{command} takes no value, got {arg!r}", hint=f"type {command} alone")
    if command == "/retention":
        return session.set_compression(text, retention=_number(command, arg, float))
    if command == "/tokens":
        return session.set_compression(text, tokens=_number(command, arg, int))
    if command == "/tau":
        return session.set_compression(text, tau=_number(command, arg, float))
    if command == "/off":
        return session.set_compression(text)
    if command == "/frames":
        return session.set_frames(_number(command, arg, int), on_status=on_status)
    if command == "/video":
        return session.set_video(arg, on_status=on_status)
    if command == "/save":
        return session.save(arg)
    if command == "/stats":
        return session.stats()
    if command == "/reset":
        return session.reset()
    if command == "/help":
        return Help()
    if command in ("/quit", "/exit"):
        return Quit()
    raise OptionError(f"unknown command {command}", hint="/help lists the commands; a question cannot start with /")
