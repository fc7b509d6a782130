"""CLI tier: every command and flag family through ``typer.testing.CliRunner`` on a tiny random checkpoint, JSON
fields, every error class with its exit code, and the lazy-import guarantee."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from scissor_cli.cli import app
from scissor_cli.errors import ModelError, OptionError, ProfileError, VideoError

ANSWER_FIELDS = {
    "video",
    "question",
    "answer",
    "tokens",
    "retention",
    "tau",
    "epsilon",
    "frames",
    "timings_s",
    "model",
    "profile",
}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 2 s, 10 fps test pattern with motion: real decodable video, tiny."""
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=96x64:rate=10",
            "-t",
            "2",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return str(path)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SCISSOR_PROFILES_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("SCISSOR_DEBUG", raising=False)


def run(*args, env=None):
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return result


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def one_line_error(result, code, *words):
    assert result.exit_code == code, f"exit {result.exit_code} != {code}; output:\n{result.output}"
    err = result.stderr
    assert "Traceback" not in result.output, "no traceback without SCISSOR_DEBUG"
    first = [line for line in err.splitlines() if line.strip()][0]
    assert first.startswith("error:"), f"first stderr line should be the error, got {first!r}"
    for w in words:
        assert w.lower() in err.lower(), f"{w!r} not in stderr:\n{err}"
    assert result.stdout == "", "errors never go to stdout"


# ---------------------------------------------------------------------------------------------------- light paths
def test_help_profiles_and_version_import_no_heavy_modules():
    code = (
        "import sys\n"
        "from scissor_cli.cli import app\n"
        "for args in (['--help'], ['profiles', 'list'], ['profiles', 'show', 'r10'], ['version'], ['ask', '--help']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (args, e.code)\n"
        "heavy = [m for m in ('torch', 'transformers', 'decord', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, f"light commands imported heavy modules: {out.stdout.splitlines()[-1]}"


def test_every_command_help_shows_examples():
    for cmd in ("ask", "inspect", "batch"):
        result = run(cmd, "--help")
        assert result.exit_code == 0 and "Examples" in result.output and "scissor " + cmd in result.output, cmd


def test_profiles_list_and_show():
    result = run("profiles", "list")
    assert result.exit_code == 0
    for name in ("default", "r50", "r35", "r10", "r5", "fast", "off"):
        assert name in result.stdout
    result = run("profiles", "show", "r10")
    assert result.exit_code == 0 and "retention: 0.1" in result.stdout
    one_line_error(run("profiles", "show", "nope"), ProfileError.exit_code, "unknown profile", "hint:")


def test_version():
    result = run("version")
    assert result.exit_code == 0 and result.stdout.startswith("scissor ")


# ---------------------------------------------------------------------------------------------------- ask
def test_ask_text_output_shows_answer_and_stats(tiny_hf_dir, clip):
    result = run(
        "ask",
        clip,
        "What is happening?",
        "--model",
        tiny_hf_dir,
        "--frames",
        "4",
        "--max-new-tokens",
        "4",
        "--timestamps",
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "Q: What is happening?",
        "A:",
        "visual tokens",
        "original → spatial → final",
        "tau / epsilon",
        "TFLOPs",
        "prefill",
        "timestamps",
        "cpu",
    ):
        assert text in out, f"{text!r} missing from:\n{out}"


def test_ask_json_fields_and_counts(tiny_hf_dir, clip):
    result = run(
        "ask",
        clip,
        "What is happening?",
        "-q",
        "How many people?",
        "--model",
        tiny_hf_dir,
        "--frames",
        "4",
        "--max-new-tokens",
        "3",
        "--json",
    )
    assert result.exit_code == 0, result.output
    records = json_lines(result.stdout)
    assert [r["question"] for r in records] == ["What is happening?", "How many people?"]
    for r in records:
        assert ANSWER_FIELDS <= set(r), f"missing fields {ANSWER_FIELDS - set(r)}"
        t = r["tokens"]
        assert t["original"] == 4 * 16, "tiny model: 4 frames x 16 tokens"
        assert 1 <= t["final"] <= t["spatial"] <= t["original"]
        assert r["retention"] == pytest.approx(t["final"] / t["original"])
        assert r["frames"] == 4 and r["tau"] == pytest.approx(0.9) and r["epsilon"] == pytest.approx(0.05)
        assert set(r["timings_s"]) >= {"decode", "vision", "compression", "prefill", "generation"}
        assert r["profile"]["compression"]["tau"] == pytest.approx(0.9), "profile carries the resolved settings"
        assert r["model"] == str(tiny_hf_dir)
        assert 0 < r["tflops"]["after"] <= r["tflops"]["before"], "tiny but nonzero estimated cost"
    assert records[0]["timings_s"]["vision"] == records[1]["timings_s"]["vision"], "one encoding for both questions"


def test_ask_flag_families_change_the_result(tiny_hf_dir, clip):
    def ask(*flags):
        result = run("ask", clip, "Describe.", "--model", tiny_hf_dir, "--max-new-tokens", "2", "--json", *flags)
        assert result.exit_code == 0, result.output
        return json_lines(result.stdout)[0]

    off = ask("--frames", "4", "--no-compress")
    assert off["tokens"]["final"] == off["tokens"]["original"] == 64 and off["retention"] == 1.0
    budget = ask("--frames", "4", "--tokens", "10")
    assert budget["tokens"]["final"] <= 10
    ratio = ask("--frames", "4", "--retention", "0.25")
    assert ratio["tokens"]["final"] <= 16
    low = ask("--frames", "4", "--tau", "0.0")
    assert low["tokens"]["final"] < off["tokens"]["final"] and low["tau"] == 0.0
    fps = ask("--fps", "2", "--frames", "32", "--start", "0.5", "--end", "1.5")
    assert fps["frames"] == 2 and all(0.5 <= t <= 1.5 for t in fps["timestamps"])
    prof = ask("--profile", "fast")
    assert prof["frames"] == 8 and prof["profile"]["name"] == "fast"
    sampled = ask("--frames", "4", "--temperature", "0.8", "--seed", "3")
    assert sampled["profile"]["generation"]["temperature"] == 0.8


def test_second_ask_is_served_from_the_feature_cache(tiny_hf_dir, clip):
    args = (
        "ask",
        clip,
        "What is happening?",
        "--model",
        tiny_hf_dir,
        "--frames",
        "4",
        "--max-new-tokens",
        "4",
        "--json",
    )
    first, second = json_lines(run(*args).stdout)[0], json_lines(run(*args).stdout)[0]
    assert first["cache_hit"] is False and second["cache_hit"] is True
    assert second["answer"] == first["answer"] and second["tokens"] == first["tokens"]
    third = json_lines(run(*args, "--no-cache").stdout)[0]
    assert third["cache_hit"] is False and third["answer"] == first["answer"]


def test_original_layout_checkpoint_uses_its_own_tau(tiny_zip_dir, clip):
    result = run("ask", clip, "What?", "--model", tiny_zip_dir, "--frames", "4", "--max-new-tokens", "2", "--json")
    assert result.exit_code == 0, result.output
    r = json_lines(result.stdout)[0]
    assert r["tau"] == pytest.approx(0.8) and r["epsilon"] == pytest.approx(0.1), "mm_zip_tau/epsilon are defaults"
    assert json_lines(
        run(
            "ask",
            clip,
            "What?",
            "--model",
            tiny_zip_dir,
            "--frames",
            "4",
            "--max-new-tokens",
            "2",
            "--json",
            "--tau",
            "0.95",
        ).stdout
    )[0]["tau"] == pytest.approx(0.95), "flags still win"


# ---------------------------------------------------------------------------------------------------- inspect
def test_inspect_video_only_needs_no_model(clip):
    result = run("inspect", clip, "--video-only", "--frames", "5", "--model", "/nonexistent/model")
    assert result.exit_code == 0, result.output
    assert "frame plan" in result.stdout and "5 frames" in result.stdout
    data = json_lines(run("inspect", clip, "--video-only", "--frames", "5", "--json").stdout)[0]
    assert data["frames"] == 5 and data["info"]["width"] == 96 and data["info"]["height"] == 64
    assert "tokens" not in data


def test_inspect_with_model_sweep_and_viz(tiny_hf_dir, clip, tmp_path):
    png = tmp_path / "map.png"
    result = run("inspect", clip, "--model", tiny_hf_dir, "--frames", "4", "--sweep", "--viz", png, "--json")
    assert result.exit_code == 0, result.output
    data = json_lines(result.stdout)[0]
    assert data["tokens"]["original"] == 64 and len(data["spatial_per_frame"]) == 4
    assert sum(data["spatial_per_frame"]) == data["tokens"]["spatial"]
    rows = sorted(data["sweep"], key=lambda r: r["tau"])
    spatial = [row["spatial"] for row in rows]
    # components at a higher tau refine those at a lower one, so the spatial count is monotone; the final count
    # need not be (the temporal step sees different means), but never exceeds the spatial one
    assert spatial == sorted(spatial), "a higher tau never keeps fewer tokens in the spatial step"
    assert all(1 <= row["final"] <= row["spatial"] for row in rows)
    raw = png.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    assert width == 4 * 64 + 3 * 6 and height == 64, "4 frames in a row, 4x4 cells of 16 px"
    text = run("inspect", clip, "--model", tiny_hf_dir, "--frames", "4", "--sweep")
    assert "retention by tau" in text.stdout and "spatial per frame" in text.stdout


# ---------------------------------------------------------------------------------------------------- errors
def test_missing_video_is_a_video_error(tiny_hf_dir, tmp_path):
    one_line_error(
        run("ask", tmp_path / "nope.mp4", "Q?", "--model", tiny_hf_dir), VideoError.exit_code, "nope.mp4", "hint:"
    )


def test_corrupt_and_empty_videos_are_video_errors(tiny_hf_dir, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    one_line_error(run("ask", junk, "Q?", "--model", tiny_hf_dir), VideoError.exit_code, "junk.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    one_line_error(run("inspect", empty, "--video-only"), VideoError.exit_code, "empty")


def test_bad_profile_and_bad_values(clip, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("compression:\n  tua: 0.8\n")
    one_line_error(run("ask", clip, "Q?", "--profile", bad), ProfileError.exit_code, "compression.tua")
    one_line_error(run("ask", clip, "Q?", "--tau", "2"), OptionError.exit_code, "tau")
    one_line_error(run("ask", clip, "Q?", "--retention", "0.1", "--tokens", "5"), OptionError.exit_code, "budget")
    one_line_error(run("inspect", clip, "--video-only", "--viz", "x.png"), OptionError.exit_code, "--video-only")
    result = run("ask", clip, "Q?", "--tau", "abc")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_budget_out_of_reach_is_one_line(clip, tiny_hf_dir):
    # a temporal tau of 1 merges nothing, so 4 frames keep at least 4 tokens whatever the spatial tau
    result = run("inspect", clip, "--model", tiny_hf_dir, "--frames", "4", "--tokens", "2", "--tau-temporal", "1")
    one_line_error(result, OptionError.exit_code, "out of reach", "tau_temporal", "hint:")


def test_unknown_model_is_a_model_error(clip, tmp_path):
    one_line_error(run("ask", clip, "Q?", "--model", tmp_path / "no-such-dir"), ModelError.exit_code, "no-such-dir")
    one_line_error(
        run("ask", clip, "Q?", "--model", "nobody/no-such-model", "--offline"),
        ModelError.exit_code,
        "nobody/no-such-model",
        "hint:",
    )


def test_debug_variable_shows_the_traceback(clip, tmp_path):
    result = run("ask", clip, "Q?", "--model", tmp_path / "no-such-dir", env={"SCISSOR_DEBUG": "1"})
    assert result.exit_code == ModelError.exit_code and "Traceback" in result.stderr


def test_console_script_and_module_entry_points(clip):
    script = shutil.which("scissor", path=os.path.dirname(sys.executable)) or shutil.which("scissor")
    assert script, "the `scissor` console script is installed next to the interpreter"
    for cmd in (
        [script, "inspect", clip, "--video-only", "--json"],
        [sys.executable, "-m", "scissor_cli", "inspect", clip, "--video-only", "--json"],
    ):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["frames"] == 20, "a 20-frame clip with 32 asked gives each frame once"


def test_cache_info_and_clear(tiny_hf_dir, clip):
    assert "0 encodings" in run("cache", "info").stdout
    run("ask", clip, "Q?", "--model", tiny_hf_dir, "--frames", "2", "--max-new-tokens", "1")
    assert "1 encoding," in run("cache", "info").stdout
    assert "removed 1" in run("cache", "clear").stdout
    assert "0 encodings" in run("cache", "info").stdout
    one_line_error(run("cache", "info", env={"SCISSOR_CACHE_MAX_GB": "lots"}), OptionError.exit_code, "GiB")
    for cmd in (("ask", clip, "Q?"), ("inspect", clip), ("batch", clip, "-q", "Q?")):  # before any model loads
        result = run(*cmd, "--model", tiny_hf_dir.parent / "no-such-model", env={"SCISSOR_CACHE_MAX_GB": "lots"})
        one_line_error(result, OptionError.exit_code, "SCISSOR_CACHE_MAX_GB")


def test_compression_flags_switch_a_profiles_compression_back_on(tiny_hf_dir, clip):
    args = ("ask", clip, "Q?", "--model", tiny_hf_dir, "--frames", "4", "--max-new-tokens", "1", "--json")
    r = json_lines(run(*args, "--profile", "off", "--tokens", "10").stdout)[0]
    assert r["tokens"]["final"] <= 10 and r["profile"]["compression"]["enabled"] is True, "the flag beats the profile"
    one_line_error(run(*args, "--no-compress", "--tau", "0.5"), OptionError.exit_code, "--no-compress", "--tau")
    one_line_error(run(*args[:3], "-q", "  ", *args[3:]), OptionError.exit_code, "empty")


def test_cache_key_changes_when_a_local_checkpoint_is_retrained(tmp_path, clip):
    from tiny_checkpoint import build_tiny_checkpoint

    ckpt = tmp_path / "ckpt"
    args = ("inspect", clip, "--model", ckpt, "--frames", "4", "--json")
    build_tiny_checkpoint(ckpt, seed=0)
    first = json_lines(run(*args).stdout)[0]
    build_tiny_checkpoint(ckpt, seed=7)  # new weights in the same folder
    second = json_lines(run(*args).stdout)[0]
    fresh = json_lines(run(*args, "--no-cache").stdout)[0]
    assert first["cache_hit"] is False and second["cache_hit"] is False, "new weights must not hit the old entry"
    assert second["tokens"] == fresh["tokens"] and second["spatial_per_frame"] == fresh["spatial_per_frame"]


def test_sweep_and_text_output_honour_tau_temporal(tiny_hf_dir, clip):
    args = ("inspect", clip, "--model", tiny_hf_dir, "--frames", "8", "--tau-temporal", "0.5", "--sweep")
    data = json_lines(run(*args, "--json").stdout)[0]
    row = next(r for r in data["sweep"] if r["tau"] == 0.9)
    assert (row["spatial"], row["final"]) == (data["tokens"]["spatial"], data["tokens"]["final"]), (
        "the sweep's tau 0.9 row counts what compress at tau 0.9 (temporal 0.5) keeps"
    )
    assert "(temporal 0.5)" in run(*args).stdout


def test_viz_into_an_unwritable_folder_fails_before_any_work(clip, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("root writes anywhere")
        one_line_error(run("inspect", clip, "--viz", folder / "x.png"), OptionError.exit_code, "not writable")
    finally:
        folder.chmod(0o700)
