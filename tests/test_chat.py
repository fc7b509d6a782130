"""``scissor chat``: a conversation about one video on the tiny checkpoint, driven through a pipe (CliRunner) and
through a real terminal (``pty``): the vision tower runs once, /commands re-compress from memory, ``--no-history``
equals ``ask``, the multi-turn prompt, streaming, Ctrl-C during an answer, and the context check."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from media import pattern_clip
from typer.testing import CliRunner

from scissor_cli.cli import app
from scissor_cli.errors import ManifestError, OptionError, VideoError

ROOT = Path(__file__).resolve().parents[1]
ASK_FIELDS = {
    "video", "question", "answer", "tokens", "retention", "tau", "tau_temporal", "epsilon", "budget", "frames",
    "timestamps", "timings_s", "tflops", "prefill_tokens", "model", "device", "dtype", "engine", "cache_hit", "note",
    "profile",
}  # fmt: skip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 2 s, 10 fps test pattern with motion."""
    return pattern_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=2)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SCISSOR_PROFILES_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for var in ("SCISSOR_DEBUG", "SCISSOR_CONFIG", "SCISSOR_MODEL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def vision_calls(monkeypatch):
    """Counts the vision tower's runs (VisionLanguageModel.encode: SigLIP + projector + pooling)."""
    from scissor_cli.model import VisionLanguageModel

    calls = []
    original = VisionLanguageModel.encode

    def counting(self, frames, *args, **kwargs):
        calls.append(frames.shape[0])
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(VisionLanguageModel, "encode", counting)
    return calls


def chat(*args, lines=()):
    """``scissor chat`` with stdin a pipe carrying ``lines``."""
    text = "".join(line + "\n" for line in lines)
    return CliRunner().invoke(app, ["chat", *[str(a) for a in args]], input=text)


def records(result):
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------- pipe mode
def test_pipe_three_questions_with_retention_in_the_middle_run_the_vision_tower_once(tiny_hf_dir, clip, vision_calls):
    lines = ["What is happening?", "And then?", "/retention 0.1", "Describe the video."]
    args = [clip, "--model", tiny_hf_dir, "--frames", "8", "--max-new-tokens", "6", "--no-compress", "--json"]
    result = chat(*args, lines=lines)
    assert result.exit_code == 0, result.output
    turns = records(result)
    assert [t["turn"] for t in turns] == [1, 2, 3], "three questions, three answers, numbered"
    assert [t["question"] for t in turns] == [lines[0], lines[1], lines[3]]
    assert vision_calls == [8], f"the vision tower ran {len(vision_calls)} times; /retention must reuse the features"
    for t in turns:
        assert set(t) == ASK_FIELDS | {"turn"}, f"ask --json's fields plus turn, got {sorted(t)}"
    assert turns[0]["retention"] == turns[1]["retention"] == 1.0, "--no-compress: every token for turns 1 and 2"
    third = turns[2]
    assert third["retention"] <= 0.1 and third["tokens"]["final"] <= 0.1 * third["tokens"]["original"], third
    assert third["budget"] == {"retention": 0.1, "tokens": 12} and third["profile"]["compression"]["retention"] == 0.1
    assert third["timings_s"]["vision"] == 0.0 and turns[0]["timings_s"]["vision"] > 0, "the tower's cost: turn 1"
    assert "/retention 0.1:" in result.stderr and "no vision tower" in result.stderr, result.stderr


def test_tau_tokens_off_and_frames_say_what_changed(tiny_hf_dir, clip, vision_calls):
    lines = ["/tau 0.8", "/tokens 5", "/off", "/frames 4", "Q?"]
    result = chat(clip, "--model", tiny_hf_dir, "--frames", "8", "--max-new-tokens", "3", "--json", lines=lines)
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert "/tau 0.8:" in err and "tau 0.8 " in err, err
    assert "/tokens 5:" in err and "budget 5 tokens" in err, err
    assert "/off:" in err and "compression off" in err, err
    assert "/frames 4: 8 → 4 frames" in err and "decoded and encoded again" in err, err
    assert vision_calls == [8, 4], "only /frames runs the vision tower again"
    [turn] = records(result)
    assert turn["frames"] == 4 and turn["retention"] == 1.0 and turn["tau"] is None


def test_no_history_answers_equal_ask(tiny_hf_dir, clip):
    questions = ["What is happening?", "Describe the video.", "How many people appear in the clip?"]
    common = ["--model", tiny_hf_dir, "--frames", "8", "--max-new-tokens", "8", "--retention", "0.35"]
    result = chat(clip, *common, "--json", "--no-history", lines=questions)
    assert result.exit_code == 0, result.output
    chat_answers = [t["answer"] for t in records(result)]
    ask_answers = []
    for q in questions:
        asked = CliRunner().invoke(app, ["ask", clip, q, *map(str, common), "--json"])
        assert asked.exit_code == 0, asked.output
        ask_answers.append(records(asked)[0]["answer"])
    assert chat_answers == ask_answers, "--no-history must give ask's answers for the same settings (greedy)"
    assert len(set(ask_answers)) > 1, "the questions must lead to different answers, or the test proves nothing"


def test_plain_pipe_prints_each_answer_on_stdout(tiny_hf_dir, clip):
    questions = ["What is happening?", "And then?"]
    common = [clip, "--model", tiny_hf_dir, "--frames", "4", "--max-new-tokens", "6"]
    plain = chat(*common, lines=questions)
    as_json = chat(*common, "--json", lines=questions)
    assert plain.exit_code == 0 and as_json.exit_code == 0, plain.output + as_json.output
    answers = [t["answer"] for t in records(as_json)]
    expected = "".join(a + "\n" for a in answers)
    assert [line.rstrip() for line in plain.stdout.split("\n")] == [line.rstrip() for line in expected.split("\n")]
    assert "visual tokens" in plain.stderr and "turn 2 ·" in plain.stderr, "stats and costs go to stderr"


def test_context_overflow_has_a_clear_message_and_reset_is_the_way_out(tiny_hf_dir, clip):
    """The tiny model's context is 4,096 positions: three ~1,500-token questions cannot all stay in the prompt."""
    from transformers import AutoTokenizer

    long_q = "The cat jumps onto the table and knocks over a glass of water. " * 58
    n_tokens = len(AutoTokenizer.from_pretrained(str(tiny_hf_dir))(long_q).input_ids)
    assert 1200 < n_tokens < 1900, f"the question should be ~1,500 tokens, is {n_tokens}"
    lines = [long_q + "1?", long_q + "2?", long_q + "3?", "/reset", long_q + "4?"]
    args = [clip, "--model", tiny_hf_dir, "--frames", "4", "--max-new-tokens", "4", "--json"]
    result = chat(*args, lines=lines)
    assert result.exit_code == OptionError.exit_code, "a failed line makes the session's exit status non-zero"
    assert [t["question"][-2:] for t in records(result)] == ["1?", "2?", "4?"], "turn 3 overflows; after /reset 4 fits"
    err = result.stderr
    assert "error: this turn would not fit in the model's context" in err and "> 4,096" in err, err
    assert "hint: /reset to forget the 2 earlier turns" in err, err
    assert "conversation reset: 2 earlier turns forgotten" in err
    assert "Traceback" not in result.output


def test_bad_lines_are_reported_and_the_session_goes_on(tiny_hf_dir, clip, tmp_path):
    lines = ["/retention 2", "/frames x", "/bogus", "/save", "/video -", "/video missing.mp4", "Q?"]
    result = chat(clip, "--model", tiny_hf_dir, "--frames", "4", "--max-new-tokens", "3", "--json", lines=lines)
    err = result.stderr
    assert "error: /retention 2.0 is out of range" in err and "hint: /retention must be" in err, err
    assert "error: /frames needs a whole number, got 'x'" in err, err
    assert "error: unknown command /bogus" in err and "/help" in err, err
    assert "error: chat reads its questions from stdin" in err, err
    assert "missing.mp4" in err, err
    assert "error: /save needs a value" in err, err
    [turn] = records(result)
    assert turn["video"] == clip and turn["frames"] == 4, "a failed /video keeps the session's video"
    assert result.exit_code == VideoError.exit_code, "the last failure's class decides the exit status"


def test_save_writes_the_transcript_and_video_starts_over(tiny_hf_dir, clip, tmp_path):
    other = tmp_path / "other.mp4"
    shutil.copy(clip, other)
    out = tmp_path / "chat.jsonl"
    lines = ["Q one?", "Q two?", f"/video {other}", "Q three?", f"/save {out}", f"/save {tmp_path}/no/such/dir.jsonl"]
    result = chat(clip, "--model", tiny_hf_dir, "--frames", "4", "--max-new-tokens", "3", lines=lines)
    assert result.exit_code == ManifestError.exit_code, result.output
    saved = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["turn"] for r in saved] == [1, 2, 3] and saved[2]["video"] == str(other), saved
    assert all(set(r) == ASK_FIELDS | {"turn"} for r in saved)
    assert "the conversation starts over (2 earlier turns forgotten)" in result.stderr
    assert f"transcript (3 turns) written to {out}" in result.stderr.replace("\n", "")
    assert "cannot write the transcript" in result.stderr


def test_stdin_video_is_refused(tiny_hf_dir):
    result = chat("-", "--model", tiny_hf_dir, lines=["Q?"])
    assert result.exit_code == OptionError.exit_code and "cannot come from stdin" in result.stderr, result.output


def test_chat_help_is_light_and_shows_examples():
    code = (
        "import sys\n"
        "from scissor_cli.cli import app\n"
        "try:\n"
        "    app(['chat', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "print('HEAVY', [m for m in ('torch', 'transformers', 'decord', 'numpy') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={
        **os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout and "Examples" in out.stdout and "scissor chat" in out.stdout, out.stdout


def test_help_lists_every_command(tiny_hf_dir, clip):
    result = chat(clip, "--model", tiny_hf_dir, "--frames", "2", lines=["/help", "/quit", "never asked?"])
    assert result.exit_code == 0 and result.stdout == "", "/quit ends before the last line"
    for command in ("/retention", "/tokens", "/tau", "/off", "/frames", "/stats", "/reset", "/video", "/save", "/quit"):
        assert command in result.stderr, command


# ---------------------------------------------------------------------------------------------------- the prompt
@pytest.fixture(scope="module")
def vlm(tiny_hf_dir):
    from scissor_cli.model import load_model
    from scissor_cli.options import ModelOptions

    return load_model(ModelOptions(model=str(tiny_hf_dir), device="cpu", dtype="float32"))


@pytest.mark.parametrize("layout", ["llava-hf", "llava-next"])
def test_history_prompt_has_the_video_once_then_the_turns_in_order(layout, tiny_hf_dir, tiny_next_dir):
    from scissor_cli.model import load_model
    from scissor_cli.options import ModelOptions

    folder = tiny_hf_dir if layout == "llava-hf" else tiny_next_dir
    model = load_model(ModelOptions(model=str(folder), device="cpu", dtype="float32"))
    history = [("What is happening?", "A dog runs."), ("Where?", "In the park.")]
    before, after = model._prompt_text("And then?", tuple(history))
    assert before == model._prompt_text("What is happening?")[0], "the video sits where ask puts it"
    order = [after.index(s) for s in ("What is happening?", "A dog runs.", "Where?", "In the park.", "And then?")]
    assert order == sorted(order), f"turns out of order in {after!r}"
    assert after.count("<|im_start|>assistant") == 3 and after.endswith("<|im_start|>assistant\n"), after
    assert model.prompt_ids("And then?", history) != model.prompt_ids("And then?"), "history must reach the ids"


def test_session_keeps_the_conversation_in_the_prompt(vlm, clip):
    from scissor_cli.chat import ChatSession
    from scissor_cli.options import Profile

    profile = Profile().override(sampling={"n_frames": 4}, generation={"max_new_tokens": 4}, model={"cache": False})
    with_history = ChatSession(vlm, profile)
    with_history.open(clip)
    first = with_history.ask("What is happening?")
    second = with_history.ask("And then?")
    alone = ChatSession(vlm, profile, history=False)
    alone.open(clip)
    assert alone.ask("What is happening?").answer.answer == first.answer.answer, "turn 1 is ask's prompt"
    lone = alone.ask("And then?")
    expected = vlm.prompt_length(
        first.answer.tokens["final"], "And then?", [("What is happening?", first.answer.answer)]
    )
    assert second.n_prompt_tokens == expected > lone.n_prompt_tokens, "turn 2 reads turn 1's question and answer"
    assert (
        with_history.reset().n_forgotten == 2 and with_history.ask("And then?").n_prompt_tokens == lone.n_prompt_tokens
    )


def test_generate_streams_the_answer_and_stops_when_asked(vlm):
    import torch

    from scissor_cli.options import GenerationOptions

    tokens = torch.randn(12, vlm.hidden_size)
    gen = GenerationOptions(max_new_tokens=24)
    pieces = []
    full = vlm.generate([(tokens, "Describe the video.")], gen, on_text=pieces.append)
    assert len(pieces) > 1 and "".join(pieces).strip() == full.texts[0], "the pieces add up to the answer"
    plain = vlm.generate([(tokens, "Describe the video.")], gen)
    assert plain.texts == full.texts, "streaming does not change the answer"
    stopped = vlm.generate([(tokens, "Describe the video.")], gen, should_stop=lambda: True)
    assert stopped.n_new_tokens == [1], "a stop request ends generation after the current token"


# ---------------------------------------------------------------------------------------------------- a terminal
class Terminal:
    """``scissor chat`` on a pseudo-terminal: what a person at a terminal sees and types."""

    def __init__(self, args, env):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: its stdin/stdout/stderr are the terminal, and Ctrl-C comes from it
            os.execve(sys.executable, [sys.executable, "-m", "scissor_cli", "chat", *args], env)
        self.seen = ""

    def read_until(self, text, timeout=180.0, start=0):
        deadline = time.monotonic() + timeout
        while text not in self.seen[start:]:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never appeared; the terminal shows:\n{self.seen[-3000:]}"
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                assert chunk, f"the session ended before {text!r}; the terminal shows:\n{self.seen[-3000:]}"
                self.seen += chunk.decode("utf-8", "replace")
        return self.seen.index(text, start) + len(text)

    def poll(self, timeout):
        if select.select([self.fd], [], [], timeout)[0]:
            self.seen += os.read(self.fd, 4096).decode("utf-8", "replace")

    def type(self, text):
        os.write(self.fd, text.encode())

    def exit_status(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:  # keep draining, or a full terminal buffer would block the child
                if select.select([self.fd], [], [], 0.2)[0]:
                    self.seen += os.read(self.fd, 4096).decode("utf-8", "replace")
            except OSError:
                time.sleep(0.1)
        os.kill(self.pid, 9)
        raise AssertionError(f"the session did not end; the terminal shows:\n{self.seen[-3000:]}")


def test_terminal_prompt_streamed_answer_ctrl_c_and_ctrl_d(tiny_hf_dir, clip, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "TERM": "xterm"}
    args = [clip, "--model", str(tiny_hf_dir), "--frames", "2", "--max-new-tokens", "300", "--no-cache"]
    term = Terminal(args, env)
    try:
        at = term.read_until(">>> ")
        assert "visual tokens" in term.seen and "/help" in term.seen, "stats and the help hint before the prompt"
        time.sleep(0.5)  # a person's pace (see below)
        term.type("Describe the video in detail.\r")
        at = term.read_until("Describe the video in detail.\r\n", start=at)
        deadline = time.monotonic() + 120
        while len(term.seen[at:].strip()) < 3:  # the answer's first characters, streamed
            assert time.monotonic() < deadline, f"no streamed text; the terminal shows:\n{term.seen[-2000:]}"
            term.poll(0.2)
        assert "turn 1 ·" not in term.seen, "text appeared while the answer was still being generated"
        term.type("\x03")  # Ctrl-C
        end = term.read_until("(stopped)", timeout=60, start=at)
        cost = term.seen[term.seen.rindex("turn 1 ·", 0, end) : end]
        n_out = int(cost.split(" out")[0].rsplit("in · ", 1)[1])
        assert 1 <= n_out < 300, f"the answer stopped early, after {n_out} tokens: {cost!r}"
        at = term.read_until(">>> ", start=end)
        time.sleep(0.5)  # a person's pace (see below)
        term.type("/stats\r")
        at = term.read_until("1 earlier turn)", start=at)  # the stopped answer stays in the conversation
        at = term.read_until(">>> ", start=at)
        # a person's pace: keys typed within milliseconds of the prompt, before readline takes the terminal, are
        # discarded with the terminal's pending input, and the Ctrl-C among them waits for the next key
        time.sleep(0.5)
        term.type("half a line\x03")  # Ctrl-C at the prompt: the line is dropped, the session goes on
        at = term.read_until("Ctrl-D or /quit", start=at)
        at = term.read_until(">>> ", start=at)
        time.sleep(0.5)  # a person's pace (see below)
        term.type("\x04")  # Ctrl-D ends
        assert term.exit_status() == 0, term.seen[-2000:]
        assert "interrupted" not in term.seen and "Traceback" not in term.seen
    finally:
        try:
            os.kill(term.pid, 9)
            os.waitpid(term.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(term.fd)
    history = (tmp_path / "state" / "scissor" / "chat_history").read_text()
    assert "Describe the video in detail." in history and "half a line" not in history, history


@pytest.mark.parametrize("during", ["prompt", "answer"])
def test_sigterm_at_the_terminal_ends_the_session(tiny_hf_dir, clip, during):
    """Ctrl-C at the prompt drops the line, during an answer stops it, and the session goes on; SIGTERM ends the
    session in both places (exit 143, one line)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "TERM": "xterm"}
    term = Terminal([clip, "--model", str(tiny_hf_dir), "--frames", "2", "--max-new-tokens", "300", "--no-cache"], env)
    try:
        at = term.read_until(">>> ")
        time.sleep(0.5)  # readline has the terminal
        if during == "answer":
            term.type("Describe the video in detail.\r")
            at = term.read_until("Describe the video in detail.\r\n", start=at)
            deadline = time.monotonic() + 120
            while len(term.seen[at:].strip()) < 3:  # the answer is streaming
                assert time.monotonic() < deadline, f"no streamed text; the terminal shows:\n{term.seen[-2000:]}"
                term.poll(0.2)
        os.kill(term.pid, signal.SIGTERM)
        assert term.exit_status() == 143, term.seen[-2000:]
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", term.seen)  # without the colours
        assert plain.count("interrupted (SIGTERM)") == 1 and "Traceback" not in plain, term.seen[-2000:]
        assert "(stopped)" not in plain and "session goes on" not in plain, term.seen[-2000:]
    finally:
        try:
            os.kill(term.pid, 9)
            os.waitpid(term.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(term.fd)


def test_streamed_text_keeps_control_characters_off_a_terminal(monkeypatch):
    import io

    from scissor_cli import render

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, expected in ((Terminal(), "a\tb\nc[2Jd"), (io.StringIO(), "a\tb\nc\x1b[2J\x07d")):
        monkeypatch.setattr(sys, "stdout", stream)
        render.chat_text("a\tb\nc\x1b[2J\x07d")
        assert stream.getvalue() == expected, "a terminal gets no escape sequences; a pipe gets the text as is"


def test_kv_cache_across_turns_gives_the_same_answers_and_prefills_only_what_is_new(vlm, clip):
    from chat_script import replies

    from scissor_cli.chat import ChatSession
    from scissor_cli.options import Profile

    profile = Profile().override(sampling={"n_frames": 4}, generation={"max_new_tokens": 6}, model={"cache": False})
    cached, plain = ChatSession(vlm, profile), ChatSession(vlm, profile, kv_cache=False)
    lines = ["What is happening?", "And then?", "/retention 0.5", "Why?", "/reset", "Who?", "Where?"]
    turns = {name: replies(session, clip, lines) for name, session in (("cached", cached), ("plain", plain))}
    ids = [[t.answer.answer for t in turns[name]] for name in ("cached", "plain")]
    assert ids[0] == ids[1], "the KV cache changed a greedy answer"
    assert len(ids[0]) == 5
    full = [t.n_prompt_tokens for t in turns["cached"]]
    prefilled = [t.answer.prefill_tokens for t in turns["cached"]]
    assert [t.answer.prefill_tokens for t in turns["plain"]] == full, "without the cache every token is prefilled"
    assert prefilled[0] == full[0], "turn 1 prefills everything"
    visual = turns["cached"][1].answer.tokens["final"]
    assert prefilled[1] < full[1] - visual, "turn 2 reads the video from the cache"
    before = len(vlm.prompt_ids("Why?", cached.history[:2])[0])
    assert prefilled[2] == full[2] - before, "/retention: the video changed, only the text before it is reused"
    assert prefilled[3] < full[3] - turns["cached"][3].answer.tokens["final"], "/reset keeps the video cached"
    assert prefilled[4] < full[4] - turns["cached"][4].answer.tokens["final"]
    record = turns["cached"][1].to_dict()
    assert record["prefill_tokens"] == prefilled[1]


def test_a_cached_turn_is_still_refused_before_generating(vlm, clip, monkeypatch):
    from scissor_cli.chat import ChatSession
    from scissor_cli.options import Profile

    profile = Profile().override(sampling={"n_frames": 4}, generation={"max_new_tokens": 4}, model={"cache": False})
    session = ChatSession(vlm, profile)
    session.open(clip)
    first = session.ask("What is happening?")
    calls = []
    monkeypatch.setattr(vlm, "max_positions", first.n_prompt_tokens + 8)
    monkeypatch.setattr(type(vlm), "generate", lambda *a, **k: calls.append(1))
    with pytest.raises(OptionError, match="would not fit"):
        session.ask("And then?")  # fits alone (the question bound), not after the cached turn
    assert calls == [], "refused before any prefill"
