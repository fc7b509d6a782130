"""A question longer than the model's context allows is refused before any decoding, in every front end (a flag, a
manifest line, a chat line; the lmms-eval plugin's contexts are in test_lmms_eval.py), with its length and the
limit, never its text, and without tokenizing huge text (a 100 MB question once took 18 GiB and 221 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from media import pattern_clip
from typer.testing import CliRunner

from scissor_cli import video as video_io
from scissor_cli.cli import app
from scissor_cli.errors import OptionError
from scissor_cli.model import load_model
from scissor_cli.options import ModelOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vlm(tiny_hf_dir):
    return load_model(ModelOptions(model=str(tiny_hf_dir)))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return pattern_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=1)


class SpyTokenizer:
    """The model's tokenizer, recording the length of every text it is asked to tokenize."""

    def __init__(self, tok):
        self._tok, self.lengths = tok, []

    def __call__(self, text, **kwargs):
        self.lengths.append(len(text))
        return self._tok(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


@pytest.fixture
def spy(vlm, monkeypatch):
    spy = SpyTokenizer(vlm.tokenizer)
    monkeypatch.setattr(vlm, "tokenizer", spy)
    return spy


@pytest.fixture
def no_decoding(monkeypatch):
    """Decoding a video fails the test: a refused question must be refused before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the video was decoded for a question that cannot fit")

    monkeypatch.setattr(video_io, "sample_frames", refuse)


def too_long(vlm) -> str:
    """More characters than any tokenization of them could fit in the context."""
    return "x" * (vlm.max_positions * vlm.max_token_chars + 1)


def test_huge_question_is_refused_by_its_length_without_tokenizing_it(vlm, spy):
    question = too_long(vlm)
    with pytest.raises(OptionError) as e:
        vlm.check_question(question)
    assert f"{len(question):,} characters" in e.value.message and f"{vlm.max_positions:,} tokens" in e.value.message
    assert "xxxxxxxx" not in e.value.message + (e.value.hint or ""), "lengths, not the text"
    assert spy.lengths == [], "a question longer than context x max token length must not be tokenized"


def test_question_within_the_character_bound_is_counted_in_tokens(vlm, spy):
    # byte-level BPE: an emoji is 4 byte tokens, so 2,000 characters are ~8,000 tokens > 4,096
    question = "\U0001f600" * 2000
    assert len(question) < vlm.max_positions * vlm.max_token_chars, "the character bound must not decide this one"
    with pytest.raises(OptionError) as e:
        vlm.check_question(question, reserve=16)
    n_tokens = len(vlm.tokenizer._tok(question, add_special_tokens=False).input_ids)
    assert f"{n_tokens:,} tokens (2,000 characters)" in e.value.message, e.value.message
    assert "16 for the answer" in e.value.message
    assert max(spy.lengths) == len(question)
    assert vlm.check_question("What happens?") == len(vlm.tokenizer._tok("What happens?").input_ids)


def test_ask_flag_is_refused_before_decoding(tiny_hf_dir, clip, vlm, no_decoding):
    question = "y" * 60_000  # over 4,096 x 13 characters: refused by its length (an argument holds < 128 KiB)
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, ["ask", clip, question, "--model", str(tiny_hf_dir)])
    assert result.exit_code == OptionError.exit_code, result.output
    assert "60,000 characters" in result.stderr and "4,096 tokens" in result.stderr, result.stderr
    assert "yyyyyyyy" not in result.stderr and "Traceback" not in result.output
    assert time.perf_counter() - t0 < 60


def test_manifest_job_with_a_long_question_is_its_error_record(tiny_hf_dir, clip, tmp_path, monkeypatch):
    from scissor_cli import pipeline
    from scissor_cli.batch import jobs_from_manifest, run_batch
    from scissor_cli.options import Profile, SamplingOptions

    other = tmp_path / "other.mp4"
    os.link(clip, other)  # a second video whose only job is too long: it must never be decoded
    manifest = tmp_path / "jobs.jsonl"
    rows = [
        {"id": "long", "video": str(other), "question": "z" * 60_000},
        {"id": "ok", "video": clip, "question": "What is happening?"},
        {"id": "long-options", "video": clip, "question": "Which?", "options": ["o" * 60_000, "b"]},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    encoded = []
    real = pipeline.encode_video
    monkeypatch.setattr(
        pipeline, "encode_video", lambda vlm, video, *a, **k: encoded.append(video) or real(vlm, video, *a, **k)
    )
    profile = Profile(sampling=SamplingOptions(n_frames=2), model=ModelOptions(model=str(tiny_hf_dir), cache=False))
    out = tmp_path / "out.jsonl"
    summary = run_batch(lambda: load_model(profile.model), jobs_from_manifest(str(manifest)), str(out), profile)
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert (summary.n_done, summary.n_failed) == (1, 2)
    assert records["ok"]["status"] == "ok"
    for job, n_chars in (("long", 60_000), ("long-options", None)):
        r = records[job]
        assert r["status"] == "error" and r["error_type"] == "OptionError", r
        assert "4,096 tokens" in r["error"] and "zzzzzzzz" not in r["error"] and "oooooooo" not in r["error"]
        if n_chars:
            assert f"{n_chars:,} characters" in r["error"]
    assert encoded == [clip], f"only the video with a job that fits is encoded, got {encoded}"


def test_chat_line_is_refused_and_the_session_goes_on(vlm, clip, monkeypatch):
    from scissor_cli import chat as chat_mod
    from scissor_cli.options import GenerationOptions, Profile, SamplingOptions

    profile = Profile(sampling=SamplingOptions(n_frames=2), generation=GenerationOptions(max_new_tokens=3))
    session = chat_mod.ChatSession(vlm, profile)
    session.open(clip)
    spy = SpyTokenizer(vlm.tokenizer)
    monkeypatch.setattr(vlm, "tokenizer", spy)
    with pytest.raises(OptionError, match=r"characters long .* 4,096 tokens"):
        chat_mod.handle(session, too_long(vlm))
    assert max(spy.lengths, default=0) < 1000, "the huge line must not reach the tokenizer"
    first = chat_mod.handle(session, "What is happening?")
    assert session.history and session.turns == [first]
    # within the character bound: counted in tokens
    with pytest.raises(OptionError, match="leaves it at most"):
        chat_mod.handle(session, "\U0001f600" * 1100)


def test_hundred_megabyte_chat_line_stays_small(tiny_hf_dir, clip, tmp_path):
    """The audit's case end to end: a 100 MB line on a chat's stdin. Refused with exit 2; the process's peak memory
    stays far below what tokenizing it would take (gigabytes), measured by a parent that only runs it."""
    line = tmp_path / "line.txt"
    with open(line, "w") as f:
        f.write("word " * 20_000_000 + "\n")  # 100 MB
    child = [sys.executable, "-m", "scissor_cli", "chat", clip, "--model", str(tiny_hf_dir), "--frames", "2"]
    code = (
        "import resource, subprocess, sys\n"
        f"with open({str(line)!r}) as stdin:\n"
        f"    r = subprocess.run({child!r}, stdin=stdin, capture_output=True, text=True, timeout=240)\n"
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stderr.write(r.stderr[-2000:])\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    rc, max_rss_kib = map(int, run.stdout.split())
    assert rc == OptionError.exit_code, run.stderr
    assert "99,999,999 characters" in run.stderr  # the line stripped and "Traceback" not in run.stderr, run.stderr
    assert max_rss_kib < 2 * 1024**2, f"peak RSS {max_rss_kib / 1024**2:.2f} GiB for a refused 100 MB line"
