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
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # no user config unless a test writes one
    for var in ("SCISSOR_DEBUG", "SCISSOR_CONFIG", "SCISSOR_MODEL"):
        monkeypatch.delenv(var, raising=False)


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
        "for args in (['--help'], ['profiles', 'list'], ['profiles', 'show', 'r10'], ['version'], ['--version'],\n"
        "             ['ask', '--help'], ['cache', 'info', '--json']):\n"
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
    assert "token map written to" in result.stderr and "written" not in result.stdout, "the message goes to stderr"
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


# ---------------------------------------------------------------------------------------------------- issue 12: CLI
def scissor_cmd():
    script = shutil.which("scissor", path=os.path.dirname(sys.executable)) or shutil.which("scissor")
    assert script, "the `scissor` console script is installed next to the interpreter"
    return script


def test_ctrl_c_at_any_moment_is_one_line_and_exit_130(tiny_hf_dir, clip, tmp_path):
    """SIGINT to the whole process group (as a terminal's Ctrl-C does, ffmpeg children included) at delays that
    land in the imports, the model load, decoding and generation."""
    import signal
    import time

    env = {**os.environ, "SCISSOR_CACHE_DIR": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    env.pop("SCISSOR_DEBUG", None)
    cmd = [scissor_cmd(), "ask", clip, "Describe.", "--model", str(tiny_hf_dir), "--frames", "16", "--no-cache"]
    cmd += ["--max-new-tokens", "400"]
    interrupted = 0
    for delay in (0.15, 0.3, 0.6, 1.0, 1.6, 2.4, 3.5, 5.0):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
        time.sleep(delay)
        if proc.poll() is not None:  # finished before the signal: nothing to interrupt at this delay
            proc.communicate()
            continue
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        text = err.decode()
        if proc.returncode == -signal.SIGINT and text == "" and "A:" in out.decode():
            continue  # the answer was out and the interpreter was shutting down when the signal landed: finished
        assert proc.returncode == 130, f"at {delay} s: exit {proc.returncode}, stderr:\n{text}"
        assert text == "interrupted\n", f"at {delay} s: one line and nothing else on stderr, got:\n{text}"
        interrupted += 1
    assert interrupted >= 4, "most delays should land while the command runs"


def test_ctrl_c_with_debug_shows_the_traceback(tiny_hf_dir, clip, tmp_path):
    import signal
    import time

    env = {**os.environ, "SCISSOR_DEBUG": "1", "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    cmd = [scissor_cmd(), "ask", clip, "Q?", "--model", str(tiny_hf_dir), "--frames", "16", "--no-cache"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" in err.decode() and err.decode().endswith("interrupted\n")


def test_interrupted_from_a_command_prints_its_message(monkeypatch, clip):
    """batch raises Interrupted with what it saved; the seam prints that as the one line, exit 130."""
    from scissor_cli import errors, video_probe

    def stop(*args, **kwargs):
        raise errors.Interrupted("3 of 10 jobs saved in out.jsonl; run the same command again to continue")

    monkeypatch.setattr(video_probe, "probe", stop)
    result = run("ask", clip, "Q?")
    assert result.exit_code == 130
    assert result.stderr == "interrupted: 3 of 10 jobs saved in out.jsonl; run the same command again to continue\n"


@pytest.mark.parametrize("json_flag", [(), ("--json",)])
def test_a_closed_stdout_ends_quietly_with_exit_0(tiny_hf_dir, clip, tmp_path, json_flag):
    env = {**os.environ, "SCISSOR_CACHE_DIR": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    for args in (
        ["ask", clip, "Q?", "-q", "Q2?", "--model", str(tiny_hf_dir)],
        ["inspect", clip, "--video-only"],
        ["ask", "--help"],
    ):
        read_end, write_end = os.pipe()
        cmd = [scissor_cmd(), *args, "--frames", "4", *json_flag]
        proc = subprocess.Popen(cmd, stdout=write_end, stderr=subprocess.PIPE, env=env)
        os.close(write_end)
        os.close(read_end)  # the reader is gone before anything is written: every write gets EPIPE
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and err == b"", f"{args[0]}: exit {proc.returncode}, stderr {err!r}"


def test_piping_into_head_is_quiet(tiny_hf_dir, clip, tmp_path):
    script = (
        f"set -o pipefail; {scissor_cmd()} ask {clip} 'Q?' --model {tiny_hf_dir} --frames 4 --max-new-tokens 2 "
        f"| head -1; {scissor_cmd()} inspect {clip} --video-only | head -1"
    )
    env = {**os.environ, "SCISSOR_CACHE_DIR": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.splitlines()[0].startswith("Q: Q?")


def test_success_leaves_stderr_empty(tiny_hf_dir, clip):
    for args in (
        ("ask", clip, "Q?", "--model", tiny_hf_dir, "--frames", "4", "--max-new-tokens", "2"),
        ("inspect", clip, "--model", tiny_hf_dir, "--frames", "4"),
        ("inspect", clip, "--video-only"),
    ):
        result = run(*args)
        assert result.exit_code == 0 and result.stderr == "", f"{args[0]}: stderr {result.stderr!r}"


def test_help_is_clean():
    for cmd in ("ask", "inspect", "batch", "profiles list", "cache info", "doctor"):
        result = run(*cmd.split(), "--help")
        assert result.exit_code == 0 and "<bool>" not in result.stdout, f"{cmd} --help shows <bool>"
    ask = run("ask", "-h")
    assert ask.exit_code == 0 and "ask [OPTIONS] VIDEO QUESTION" in ask.stdout, "-h is --help; a plain usage line"
    assert "{video}" not in ask.stdout and "default 128" in ask.stdout
    assert "default 32" in ask.stdout, "--frames says its default"
    assert "batch [OPTIONS] [PATH]..." in run("batch", "-h").stdout, "batch's usage line names its arguments"
    top = run("--help")
    assert "--install-completion" in top.stdout and "--version" in top.stdout and "doctor" in top.stdout
    version = run("--version")
    assert version.exit_code == 0 and version.stdout.startswith("scissor ")
    assert run("ask", "x.mp4", "Q?", "--json", "true").exit_code == 2, "--json takes no value"


def test_errors_name_the_flag(clip, tmp_path):
    one_line_error(run("ask", clip, "Q?", "--frames", "0"), OptionError.exit_code, "--frames 0", "1 to 4096")
    one_line_error(run("ask", clip, "Q?", "--device", "tpu"), OptionError.exit_code, "--device", "cuda:N")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  n_frames: 0\n")
    one_line_error(run("ask", clip, "Q?", "--profile", bad), ProfileError.exit_code, "sampling.n_frames")


def _bf16_cpu(monkeypatch, native: bool) -> None:
    """Pretend this CPU has (or lacks) native bf16 kernels: both branches of the detection are tested anywhere."""
    from scissor_cli import devices

    why = "pretend native" if native else "pretend emulated"
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: (native, why))


def test_emulated_half_precision_on_a_cpu_warns_once(tiny_hf_dir, clip, monkeypatch):
    from scissor_cli import cli

    _bf16_cpu(monkeypatch, native=False)
    cli._warned.clear()
    result = run("ask", clip, "Q?", "-q", "Q2?", "--model", tiny_hf_dir, "--frames", "2", "--dtype", "bf16")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning: bfloat16 on this CPU is slower than float32") == 1, result.stderr
    data = json_lines(
        run("ask", clip, "Q?", "--model", tiny_hf_dir, "--frames", "2", "--dtype", "fp32", "--json").stdout
    )
    assert data[0]["dtype"] == "float32"
    auto = json_lines(run("ask", clip, "Q?", "--model", tiny_hf_dir, "--frames", "2", "--json").stdout)
    assert auto[0]["dtype"] == "float32", "auto: float32 where bf16 would be emulated"

    cli._warned.clear()  # once per process: batch warns too
    out = clip + ".jsonl"
    result = run("batch", clip, "-q", "Q?", "-o", out, "--model", tiny_hf_dir, "--frames", "2", "--dtype", "bf16")
    assert result.exit_code == 0 and result.stderr.count("bfloat16 on this CPU is slower") == 1, result.stderr
    os.remove(out)


def test_native_bf16_cpu_runs_bf16_by_default_without_a_warning(tiny_hf_dir, clip, monkeypatch):
    from scissor_cli import cli

    _bf16_cpu(monkeypatch, native=True)
    cli._warned.clear()
    result = run("ask", clip, "Q?", "--model", tiny_hf_dir, "--frames", "2", "--max-new-tokens", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json_lines(result.stdout)[0]["dtype"] == "bfloat16", "auto: bf16 where the CPU has native kernels"
    assert "slower than float32" not in result.stderr, result.stderr
    fp16 = run("ask", clip, "Q?", "--model", tiny_hf_dir, "--frames", "2", "--max-new-tokens", "2", "--dtype", "fp16")
    assert fp16.stderr.count("float16 on this CPU is slower than float32") == 1, "float16 keeps its warning"


def test_doctor_says_what_dtype_auto_picks(monkeypatch):
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("auto picks the GPU here")
    _bf16_cpu(monkeypatch, native=True)
    report = json.loads(run("doctor", "--json").stdout)
    assert report["dtype_auto"] == {"device": "cpu", "dtype": "bfloat16", "why": "pretend native"}
    _bf16_cpu(monkeypatch, native=False)
    text = run("doctor").stdout
    assert "float32" in text and "pretend emulated" in text, text


def test_tau_with_a_budget_is_refused_everywhere(clip, tmp_path):
    for cmd in (("ask", clip, "Q?"), ("inspect", clip, "--sweep"), ("batch", clip, "-q", "Q?")):
        one_line_error(
            run(*cmd, "--tau", "0.8", "--retention", "0.1"), OptionError.exit_code, "--tau", "budget searches tau"
        )
    one_line_error(run("ask", clip, "Q?", "--no-compress", "--tokens", "5"), OptionError.exit_code, "--no-compress")
    both = tmp_path / "both.yaml"
    both.write_text("compression:\n  tau: 0.8\n  tokens: 20\n")
    one_line_error(run("inspect", clip, "--profile", both), ProfileError.exit_code, "budget searches tau")


def test_the_budget_is_visible(tiny_hf_dir, clip):
    args = (clip, "--model", tiny_hf_dir, "--frames", "4", "--retention", "0.25")
    text = run("ask", clip, "Q?", *args[1:], "--max-new-tokens", "2").stdout
    assert "budget" in text and "25 % (16 tokens) → tau" in text and "found" in text, text
    record = json_lines(run("ask", clip, "Q?", *args[1:], "--max-new-tokens", "2", "--json").stdout)[0]
    assert record["budget"] == {"retention": 0.25, "tokens": 16} and record["tokens"]["final"] <= 16
    insp = json_lines(run("inspect", *args, "--json").stdout)[0]
    assert insp["budget"] == {"retention": 0.25, "tokens": 16}
    assert "budget" in run("inspect", *args).stdout
    count = json_lines(run("inspect", clip, "--model", tiny_hf_dir, "--frames", "4", "--tokens", "9", "--json").stdout)
    assert count[0]["budget"] == {"retention": None, "tokens": 9}
    plain = json_lines(run("inspect", clip, "--model", tiny_hf_dir, "--frames", "4", "--json").stdout)[0]
    assert plain["budget"] is None and "budget" not in run("inspect", clip, "--model", tiny_hf_dir).stdout


def test_a_recorded_profile_runs_again_unchanged(tiny_hf_dir, clip, tmp_path):
    """An answer's `profile` says what ran and loads again with --profile: with a budget its tau stays auto."""
    import yaml

    args = ("--model", tiny_hf_dir, "--frames", "4", "--max-new-tokens", "2", "--json")
    first = json_lines(run("ask", clip, "Q?", *args, "--retention", "0.25").stdout)[0]
    assert first["profile"]["compression"]["tau"] is None and first["profile"]["compression"]["retention"] == 0.25
    settings = {k: v for k, v in first["profile"].items() if k != "name"}  # a file's name is its profile's name
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(settings))
    again = run("ask", clip, "Q?", "--profile", str(tmp_path / "again.yaml"), "--json")
    assert again.exit_code == 0, again.output
    second = json_lines(again.stdout)[0]
    assert (second["tokens"], second["tau"], second["answer"]) == (first["tokens"], first["tau"], first["answer"])
    fixed = json_lines(run("ask", clip, "Q?", *args, "--tau", "0.85").stdout)[0]
    assert fixed["profile"]["compression"]["tau"] == 0.85, "without a budget the tau used is recorded"


def test_load_and_total_time_are_shown(tiny_hf_dir, clip):
    args = ("--model", tiny_hf_dir, "--frames", "2")
    record = json_lines(run("ask", clip, "Q?", *args, "--max-new-tokens", "2", "--json").stdout)[0]
    t = record["timings_s"]
    assert t["load"] > 0 and t["total"] >= t["load"] + t["prefill"] + t["generation"], t
    insp = json_lines(run("inspect", clip, *args, "--json").stdout)[0]["timings_s"]
    assert insp["load"] > 0 and insp["total"] >= insp["load"]
    text = run("ask", clip, "Q?", *args, "--max-new-tokens", "2").stdout
    assert "time           load " in text and "; total " in text, text


def test_json_video_as_typed_with_device_and_dtype(tiny_hf_dir, clip, monkeypatch):
    monkeypatch.chdir(os.path.dirname(clip))
    args = ("--model", tiny_hf_dir, "--frames", "2", "--json")
    answer = json_lines(run("ask", "clip.mp4", "Q?", *args, "--max-new-tokens", "1").stdout)[0]
    insp = json_lines(run("inspect", "clip.mp4", *args).stdout)[0]
    assert answer["video"] == insp["video"] == "clip.mp4"
    from scissor_cli.devices import dtype_name

    expected = ("cpu", dtype_name("auto", "auto"))  # auto: bfloat16 on a CPU with native kernels, else float32
    assert (insp["device"], insp["dtype"]) == (answer["device"], answer["dtype"]) == expected
    assert json_lines(run("inspect", "./clip.mp4", "--video-only", "--json").stdout)[0]["video"] == "./clip.mp4"
    first = run("inspect", "clip.mp4", "--video-only").stdout.splitlines()[0]
    assert first.split() == ["video", "clip.mp4"], "the text output shows the path as typed, too"


def test_cache_info_json_and_units(tiny_hf_dir, clip):
    data = json_lines(run("cache", "info", "--json").stdout)[0]
    assert data["entries"] == 0 and data["bytes"] == 0 and data["max_bytes"] == 2 * 1024**3
    run("ask", clip, "Q?", "--model", tiny_hf_dir, "--frames", "2", "--max-new-tokens", "1")
    data = json_lines(run("cache", "info", "--json").stdout)[0]
    assert data["entries"] == 1 and 0 < data["bytes"] < 1024**2
    assert " KiB of 2 GiB" in run("cache", "info").stdout, "a small cache is not shown as 0.00 GiB"


def test_profiles_list_json_and_show_round_trip(tmp_path, clip):
    from scissor_cli.profiles import load_profile

    entries = json_lines(run("profiles", "list", "--json").stdout)[0]
    assert {e["name"] for e in entries} >= {"default", "r10", "off"} and all(e["source"] for e in entries)
    for name in ("default", "r50", "r35", "r10", "r5", "fast", "off"):
        shown = run("profiles", "show", name)
        assert shown.exit_code == 0 and shown.stderr == ""
        path = tmp_path / f"{name}.yaml"
        path.write_text(shown.stdout)
        by_name, by_file = (
            json_lines(run("inspect", clip, "--video-only", "--json", "--profile", p).stdout)[0]["profile"]
            for p in (name, path)
        )
        assert by_file == by_name, f"--profile with the output of profiles show {name} runs with the same settings"
        assert load_profile(str(path)).to_dict() | {"name": name} == load_profile(name).to_dict(), name
    one_line_error(run("profiles", "show", "r1O"), ProfileError.exit_code, "did you mean r10?")


def test_user_config_sets_the_default_model_and_cache(tiny_hf_dir, clip, tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {tiny_hf_dir}\ncache_dir: {tmp_path / 'my-cache'}\n")
    monkeypatch.setenv("SCISSOR_CONFIG", str(config))
    monkeypatch.delenv("SCISSOR_CACHE_DIR")
    record = json_lines(run("ask", clip, "Q?", "--frames", "2", "--max-new-tokens", "1", "--json").stdout)[0]
    assert record["model"] == str(tiny_hf_dir), "the config's model is the default"
    assert any((tmp_path / "my-cache").iterdir()), "the config's cache_dir holds the feature cache"
    monkeypatch.setenv("SCISSOR_MODEL", str(tmp_path / "no-such-model"))
    one_line_error(run("ask", clip, "Q?", "--frames", "2"), ModelError.exit_code, "no-such-model")
    doctor = json_lines(run("doctor", "--json").stdout)[0]
    assert doctor["config"]["path"] == str(config) and doctor["default_model"] == str(tmp_path / "no-such-model")
    assert doctor["feature_cache"]["path"] == str(tmp_path / "my-cache") and doctor["feature_cache"]["entries"] == 1
    for key in ("versions", "cuda", "ffmpeg", "ffprobe", "offline", "hf_cache"):
        assert key in doctor, key
    assert doctor["ffmpeg"].startswith("ffmpeg version") and doctor["versions"]["torch"]
    text = run("doctor")
    unfolded = "".join(line.strip() if line.startswith(" ") else "\n" + line for line in text.stdout.splitlines())
    assert text.exit_code == 0 and "CUDA" in text.stdout and str(config) in unfolded, "long paths wrap, never cut"
    config.write_text("model: x\ncolour: red\n")
    one_line_error(run("ask", clip, "Q?"), ProfileError.exit_code, "unknown key 'colour'", str(config))
    assert json_lines(run("version", "--json").stdout)[0]["scissor"]


def test_viz_keeps_the_aspect_ratio_and_labels_frames(tiny_hf_dir, clip, tmp_path):
    import zlib

    import numpy as np

    from scissor_cli import viz

    png = tmp_path / "map.png"
    result = run("inspect", clip, "--model", tiny_hf_dir, "--frames", "4", "--viz", png)
    assert result.exit_code == 0 and result.stderr.startswith("token map written to"), result.stderr
    raw = png.read_bytes()
    width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    tile_w = round(viz.TILE_H * 96 / 64)  # the 96x64 clip keeps its 3:2 shape
    assert width == viz.GAP + 4 * (tile_w + viz.GAP), "4 frames in a row at the clip's aspect ratio"
    idat = raw[raw.index(b"IDAT") + 4 : raw.index(b"IEND") - 8]
    image = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, width * 3 + 1)[:, 1:]
    image = image.reshape(height, width, 3)
    title = image[: 2 * viz.CAPTION_H]
    assert (title < 100).any(), "a title with the counts is drawn above the frames"
    caption = image[-viz.CAPTION_H - viz.GAP : -viz.GAP, viz.GAP : viz.GAP + tile_w]
    assert (caption < 100).any(), "each frame has its time below it"


def test_viz_text_and_colours():
    import numpy as np

    from scissor_cli import viz

    canvas = np.full((30, 200, 3), 255, np.uint8)
    viz.draw_text(canvas, "1.72 s", 2, 2)
    assert (canvas < 100).any() and canvas[:, viz.text_width("1.72 s") + 4 :].min() == 255, "text stays in its box"
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30, size=(3, 6, 6))
    colour = viz.colour_tokens(ids, 30)
    for a, b in ((ids[:, 1:, :], ids[:, :-1, :]), (ids[:, :, 1:], ids[:, :, :-1])):
        differ = a != b
        assert (colour[a[differ]] != colour[b[differ]]).all(), "touching tokens never share a colour"
    colours = viz.palette(40)
    assert len({tuple(c) for c in colours.tolist()}) == 40, "the palette's colours are distinct"


def test_main_reports_an_interrupt_that_escapes_the_commands(monkeypatch, capsys):
    """A Ctrl-C outside a command body (while typer parses, say) reaches main() as typer's silent exit 130."""
    import signal
    import time

    from scissor_cli import cli, cli_process

    monkeypatch.setattr(cli_process, "_sigint", {"seen": False, "reported": False, "raise": False, "main": False})

    def typer_like_app():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise SystemExit(130) from None

    monkeypatch.setattr(cli, "app", typer_like_app)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert e.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_ctrl_c_while_the_cli_imports_is_one_line():
    """The window before main() runs: a SIGINT while typer is being imported (sent by an import hook)."""
    code = (
        "import os, signal, sys\n"
        "sys.argv = ['scissor']\n"
        "class Hook:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'typer':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.meta_path.insert(0, Hook())\n"
        "import scissor_cli.cli\n"
        "print('not interrupted')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 130 and out.stderr == "interrupted\n" and out.stdout == "", out.stderr
