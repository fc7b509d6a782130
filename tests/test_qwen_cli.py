"""The front ends on tiny Qwen2.5-VL and Qwen3-VL checkpoints: ask, inspect (--sweep, --viz on the Qwen grid), batch
(budget sweeps, resume, decode-ahead), chat, report, the lmms-eval plugin, and the feature cache key."""

from __future__ import annotations

import json
import sys

import pytest
from media import pattern_clip
from typer.testing import CliRunner

from scissor_cli.cli import app


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return pattern_clip(tmp_path_factory.mktemp("qwen-cli") / "clip.mp4")


def run(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def ok(result):
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("which", ["qwen2_5_vl", "qwen3_vl"])
def test_ask_json_then_a_cache_hit(request, clip, which):
    model = request.getfixturevalue("tiny_qwen25_dir" if which == "qwen2_5_vl" else "tiny_qwen3_dir")
    args = ("ask", clip, "What is happening in this video?", "--model", model, "--frames", "8", "--dtype", "float32",
            "--retention", "0.5", "--max-new-tokens", "6", "--json")  # fmt: skip
    first = json.loads(ok(run(*args)).stdout)
    per_patch = {"qwen2_5_vl": 15, "qwen3_vl": 20}[which]  # the tiny checkpoints' pixel bounds on a 96x64 clip
    assert first["tokens"]["original"] == 4 * per_patch and first["frames"] == 8
    assert first["tokens"]["final"] <= 0.5 * first["tokens"]["original"] and not first["cache_hit"]
    assert first["tflops"]["after"] < first["tflops"]["before"]
    second = json.loads(ok(run(*args)).stdout)
    assert second["cache_hit"] and second["answer"] == first["answer"] and second["tokens"] == first["tokens"]
    assert (second["frames"], second["timestamps"], second["note"]) == (8, first["timestamps"], first["note"])


def test_inspect_sweep_and_viz_on_the_qwen_grid(tiny_qwen3_dir, clip, tmp_path):
    png = tmp_path / "map.png"
    out = json.loads(ok(run("inspect", clip, "--model", tiny_qwen3_dir, "--frames", "7", "--sweep", "--viz", png,
                            "--json")).stdout)  # fmt: skip
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["tokens"]["original"] == 4 * 24  # 7 frames: 4 temporal patches of 4x6 tokens (clip-level bounds)
    assert len(out["spatial_per_frame"]) == 4 and all(n <= 24 for n in out["spatial_per_frame"])
    assert out["sweep"] and all(e["final"] <= e["spatial"] <= 96 for e in out["sweep"])
    levels = json.loads(ok(run("inspect", clip, "--model", tiny_qwen3_dir, "--frames", "7", "--sweep",
                               "--retention", "1,0.5,0.1", "--json")).stdout)["sweep"]  # fmt: skip
    assert [e["final"] for e in levels][0] == 96 and levels[2]["final"] <= 9


def test_viz_draws_each_temporal_patch_on_both_its_frames():
    """The token map of a Qwen grid: frames 2k and 2k+1 share patch k's cells; 3 rows x 5 columns per patch."""
    import numpy as np

    from scissor_cli.viz import render_token_map

    frames = np.zeros((4, 30, 50, 3), np.uint8)
    assignment = np.concatenate([np.arange(15), np.arange(15) + 15])  # patch 0: tokens 0-14, patch 1: 15-29
    img = render_token_map(frames, assignment, 30, grid=(3, 5), columns=4)
    tiles = [img[30:190, 8 + k * (267 + 8) : 8 + k * (267 + 8) + 267] for k in range(4)]
    assert np.array_equal(tiles[0], tiles[1]) and np.array_equal(tiles[2], tiles[3])
    assert not np.array_equal(tiles[1], tiles[2])


def test_batch_sweep_resume_and_decode_ahead(tiny_qwen25_dir, clip, tmp_path):
    other = tmp_path / "other.mp4"
    other.write_bytes(open(clip, "rb").read())
    out = tmp_path / "out.jsonl"
    args = ("batch", clip, other, "-q", "What?", "-q", "Describe the video in detail.", "-o", out, "--model",
            tiny_qwen25_dir, "--frames", "8", "--dtype", "float32", "--max-new-tokens", "4",
            "--retention", "1,0.5,0.1")  # fmt: skip
    ok(run(*args, "--decode-workers", "2"))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 12 and all(r["status"] == "ok" for r in records)
    finals = {r["level"]["retention"]: r["tokens"]["final"] for r in records}
    assert finals[1.0] == 60 and finals[0.5] <= 30 and finals[0.1] <= 6
    inline = tmp_path / "inline.jsonl"
    ok(run(*args[:8], inline, *args[9:], "--decode-workers", "0"))
    strip = lambda rs: sorted((r["id"], r["answer"], r["tokens"]["final"]) for r in rs)  # noqa: E731
    assert strip(records) == strip(json.loads(line) for line in inline.read_text().splitlines())
    before = out.read_text()
    ok(run(*args))  # resume: every job is done, nothing runs again
    assert out.read_text() == before
    report = ok(run("report", out)).stdout
    assert "retention=0.5" in report and "retention=0.1" in report


@pytest.mark.parametrize("which", ["qwen2_5_vl", "qwen3_vl"])
def test_a_huge_video_is_decoded_near_the_qwen_input_and_answered(request, which, tmp_path):
    """A 9000 x 5000 GIF of a few hundred bytes (135 MB a frame decoded): Qwen's own size for it is tiny, so it is
    decoded near twice that (aspect kept) and answered with the token grid its full-size frames give; batch's
    decode-ahead workers decode it the same way."""
    from media import huge_screen_gif

    from scissor_cli import video
    from scissor_cli.model import load_model
    from scissor_cli.options import ModelOptions

    model = request.getfixturevalue("tiny_qwen25_dir" if which == "qwen2_5_vl" else "tiny_qwen3_dir")
    gif = huge_screen_gif(tmp_path / "wide.gif", 9000, 4, height=5000)
    assert gif.stat().st_size < 1000
    s = load_model(ModelOptions(model=str(model), device="cpu")).family_settings
    dw, dh = video.decode_size(video.probe(gif), 4, video.ModelInput(None, None, s.dim, s))
    th, tw = s.frame_size(4, 5000, 9000)
    assert tw <= dw < 3 * tw and th <= dh < 3 * th, ((dw, dh), (tw, th))
    args = ("--model", model, "--frames", "4", "--dtype", "float32", "--max-new-tokens", "4", "--no-compress",
            "--no-cache")  # fmt: skip
    r = json.loads(ok(run("ask", gif, "What is on the screen?", *args, "--json")).stdout)
    assert f"decoded at {dw}x{dh} instead of 9000x5000 (memory)" in r["note"], r["note"]
    assert r["tokens"]["original"] == r["tokens"]["final"] == s.n_tokens(4, 5000, 9000), r["tokens"]
    assert isinstance(r["answer"], str) and r["frames"] == 4
    if which == "qwen2_5_vl":  # two videos: the decode-ahead workers decode them
        out, twin = tmp_path / "out.jsonl", tmp_path / "twin.gif"
        twin.write_bytes(gif.read_bytes())
        ok(run("batch", gif, twin, "-q", "What is on the screen?", "-o", out, *args, "--decode-workers", "1"))
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == 2 and all(x["status"] == "ok" for x in records), records
        assert [x["note"] for x in records] == [r["note"]] * 2 and [x["answer"] for x in records] == [r["answer"]] * 2


def test_chat_turns_and_commands(tiny_qwen3_dir, clip):
    text = "What is happening?\n/retention 0.3\nDescribe it.\n/off\nAgain?\n"
    result = ok(run("chat", clip, "--model", tiny_qwen3_dir, "--frames", "8", "--dtype", "float32",
                    "--max-new-tokens", "4", input=text))  # fmt: skip
    assert result.output.count("turn ") >= 3, result.output
    assert "80 visual tokens (100.0 % of 80)" in result.output


def test_cache_key_follows_the_preprocessing(tiny_qwen25_dir):
    import dataclasses

    from scissor_cli.model import load_model
    from scissor_cli.options import ModelOptions
    from scissor_cli.pipeline import model_fingerprint

    vlm = load_model(ModelOptions(model=str(tiny_qwen25_dir), device="cpu", dtype="float32"))
    key = model_fingerprint(vlm)
    assert model_fingerprint(vlm) == key
    vlm.family_settings = dataclasses.replace(vlm.family_settings, max_pixels=vlm.family_settings.max_pixels * 2)
    assert model_fingerprint(vlm) != key, "other pixel bounds are other features"


@pytest.mark.lmms_eval
def test_lmms_eval_plugin_on_qwen(tiny_qwen25_dir, clip, tmp_path):
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance

    from scissor_cli.lmms_eval_plugin import Scissor

    argv = sys.argv
    sys.argv = ["lmms-eval", "--output_path", str(tmp_path / "out")]
    try:
        lm = Scissor.create_from_arg_string(f"pretrained={tiny_qwen25_dir},retention=0.5,max_frames_num=8",
                                            {"batch_size": "2", "device": None})  # fmt: skip
    finally:
        sys.argv = argv
    docs = [{"visual": [clip], "question": q} for q in ("What?", "Describe the video in detail.")]
    lm.task_dict = {"t": {"test": docs}}
    gen = {"max_new_tokens": 4, "do_sample": False, "until": ["\n\n"]}
    reqs = [Instance(request_type="generate_until", arguments=(d["question"], dict(gen), lambda d: d["visual"], i, "t",
                                                                "test"), idx=0,
                     metadata={"task": "t", "doc_id": i, "repeats": 1}) for i, d in enumerate(docs)]  # fmt: skip
    together = lm.generate_until(reqs)
    assert len(together) == 2 and all(isinstance(a, str) for a in together)
    assert together == [lm.generate_until([r])[0] for r in reqs]


def test_serve_answers_a_qwen_request_as_ask_does(tiny_qwen25_dir, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("openai")
    import shutil

    from test_serve import COMMON, Server, ask_json, client, video_message

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    clip = str(allowed / "clip.mp4")
    shutil.copy(pattern_clip(tmp_path / "src.mp4"), clip)
    server = Server(tmp_path, "--model", str(tiny_qwen25_dir), *COMMON, "--allow-files", str(allowed), "--no-urls")
    try:
        c = client(server)
        got = c.chat.completions.create(model=str(tiny_qwen25_dir), messages=video_message(clip, "What moves?"),
                                        extra_body={"retention": 0.5})  # fmt: skip
    finally:
        server.stop()
    expected = ask_json(clip, "What moves?", "--retention", "0.5", tiny=tiny_qwen25_dir)
    assert got.choices[0].message.content == expected["answer"]
    assert got.model_extra["scissor"]["tokens"] == expected["tokens"]


def test_an_unknown_family_is_one_line_and_exit_5(tmp_path, clip):
    folder = tmp_path / "internvl"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "internvl", "architectures": ["InternVLModel"]}))
    result = run("ask", clip, "What?", "--model", folder)
    assert result.exit_code == 5, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "internvl" in error[0] and "Qwen3-VL (qwen3_vl)" in error[0], result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("which", ["qwen2_5_vl", "qwen3_vl"])
def test_chat_kv_cache_gives_the_same_answers_and_prefills_only_what_is_new(request, clip, which, tmp_path):
    """As for LLaVA-OV (test_chat.py): a later turn reads the video and earlier turns from the cache, a new
    compression reuses only the text before the video, and every greedy answer equals the uncached chat's; also
    after /video to a clip of the same size, whose prompt ids are the same as the first one's."""
    import subprocess

    from chat_script import replies

    from scissor_cli.chat import ChatSession

    other = tmp_path / "other.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10", "-t", "1",
                    "-pix_fmt", "yuv420p", str(other)], check=True, timeout=60)  # fmt: skip
    from scissor_cli.model import load_model
    from scissor_cli.options import ModelOptions, Profile

    model = request.getfixturevalue("tiny_qwen25_dir" if which == "qwen2_5_vl" else "tiny_qwen3_dir")
    vlm = load_model(ModelOptions(model=str(model), device="cpu", dtype="float32"))
    profile = Profile().override(sampling={"n_frames": 8}, generation={"max_new_tokens": 6}, model={"cache": False})
    cached, plain = ChatSession(vlm, profile), ChatSession(vlm, profile, kv_cache=False)
    lines = ["What is happening?", "And then?", "/retention 0.5", "Why?", "/reset", "Who?", "Where?", "/off",
             "What is happening?", f"/video {other}", "What is happening?"]  # fmt: skip
    turns = {name: replies(session, clip, lines) for name, session in (("cached", cached), ("plain", plain))}
    answers = [[t.answer.answer for t in turns[name]] for name in ("cached", "plain")]
    assert answers[0] == answers[1] and len(answers[0]) == 7, "the KV cache changed a greedy answer"
    assert answers[0][5] != answers[0][6], "the two clips must give different answers, or the last turn proves nothing"
    full = [t.n_prompt_tokens for t in turns["cached"]]
    prefilled = [t.answer.prefill_tokens for t in turns["cached"]]
    assert [t.answer.prefill_tokens for t in turns["plain"]] == full
    assert prefilled[0] == full[0]
    visual = [t.answer.tokens["final"] for t in turns["cached"]]
    assert prefilled[1] < full[1] - visual[1], "turn 2 reads the video from the cache"
    before = len(vlm.prompt_ids("Why?", cached.history[:2])[0])
    assert visual[2] <= prefilled[2] <= full[2] - before, "/retention: only the text before the video is reused"
    assert prefilled[3] < full[3] - visual[3] and prefilled[4] < full[4] - visual[4], "/reset keeps the video"
