"""``--engine vllm`` end to end on real vLLM (``make test-vllm``, in .venv-vllm): greedy answers equal
``--engine hf``'s in ask, batch (several videos and questions), chat (several turns) and the CLI, seeded sampling
is reproducible, a prompt over --max-model-len is its job's error, Ctrl-C leaves no vLLM process behind.

A tiny LLaVA-OneVision with 2 LLM heads (vLLM's CPU attention needs a head size of at least 32), float32 on both
sides. One engine for the library tests (about 40 s to start here), one per CLI subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

# vLLM's CPU backend: a small KV cache, threads not pinned to cores other work is using (inherited by its processes)
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
os.environ.update({k: os.environ.get(k, v) for k, v in VLLM_ENV.items()})
MAX_MODEL_LEN = 512
QUESTIONS = ["What is happening in this video?", "Describe the video in detail.", "How many people appear?"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llava-hf", layout="llava-hf", text_heads=2)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from media import pattern_clip

    folder = tmp_path_factory.mktemp("videos")
    return [pattern_clip(folder / f"clip{i}.mp4", seconds=1.0 + i) for i in range(2)]


@pytest.fixture(scope="module")
def profile(tiny):
    from scissor_cli.settings import Overrides, resolve

    return resolve(Overrides(model=str(tiny), frames=4, max_new_tokens=12, dtype="float32", offline=True,
                             device="cpu"))  # fmt: skip


@pytest.fixture(scope="module")
def models(profile, tmp_path_factory):
    """(hf, vllm): the same checkpoint on each engine; vLLM started once for the module."""
    from scissor_cli.model import load_model

    os.environ["SCISSOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    hf = load_model(profile.model)
    vllm = load_model(replace(profile.model, engine="vllm", max_model_len=MAX_MODEL_LEN))
    yield hf, vllm
    vllm.engine.close()


def test_ask_several_questions_answers_as_hf(models, profile, videos):
    from scissor_cli.pipeline import answer

    hf, vllm = models
    assert vllm.engine.name == "vllm" and vllm.max_positions == MAX_MODEL_LEN
    a = answer(hf, videos[0], QUESTIONS, profile)
    b = answer(vllm, videos[0], QUESTIONS, profile)
    assert [x.answer for x in b] == [x.answer for x in a] and all(x.answer for x in a)
    assert [x.engine for x in a + b] == ["hf"] * 3 + ["vllm"] * 3
    assert [x.tokens for x in b] == [x.tokens for x in a], "SCC's count reaches vLLM unchanged"


def test_batch_of_videos_and_questions_answers_as_hf_and_an_overlong_job_fails_alone(models, profile, videos,
                                                                                    tmp_path):  # fmt: skip
    from scissor_cli.batch import run_batch
    from scissor_cli.jobs import jobs_from_paths

    hf, vllm = models
    long_question = "the " * MAX_MODEL_LEN  # fits the hf model's 4096 positions, not vLLM's 512
    jobs = jobs_from_paths([str(Path(videos[0]).parent)], [*QUESTIONS, long_question])
    outputs = {}
    for vlm in (hf, vllm):
        out = tmp_path / f"{vlm.engine.name}.jsonl"
        run_batch(lambda vlm=vlm: vlm, jobs, str(out), replace(profile, model=replace(profile.model,
                  engine=vlm.engine.name)), batch_size=4)  # fmt: skip
        outputs[vlm.engine.name] = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    ok = {i: r["answer"] for i, r in outputs["hf"].items() if r["status"] == "ok"}
    assert len(jobs) == 8 and len(ok) == 8, "hf's context holds the long question"
    failed = [r for r in outputs["vllm"].values() if r["status"] != "ok"]
    assert len(failed) == 2 and all(r["question"].startswith("the the") and "context" in r["error"] for r in failed)
    answered = [(i, r) for i, r in outputs["vllm"].items() if r["status"] == "ok"]
    assert len(answered) == 6 and all(r["answer"] == ok[i] and r["engine"] == "vllm" for i, r in answered)
    job_id, record = answered[0]
    assert outputs["hf"][job_id]["config_hash"] != record["config_hash"], "the engine is in the config hash"


def test_chat_turns_answer_as_hf(models, profile, videos):
    from scissor_cli.chat import ChatSession

    answers = []
    for vlm in models:
        session = ChatSession(vlm, profile)
        session.open(videos[1])
        pieces: list[str] = []
        turns = [session.ask(q, on_text=pieces.append) for q in QUESTIONS]
        assert "".join(pieces) == "".join(t.answer.answer for t in turns), "streamed pieces add up to the answers"
        answers.append([t.answer.answer for t in turns])
    assert answers[1] == answers[0]


def test_seeded_sampling_is_reproducible_within_the_engine(models):
    import torch

    from scissor_cli.options import GenerationOptions

    _, vllm = models
    video = torch.randn(40, 64)
    gen = GenerationOptions(max_new_tokens=16, temperature=1.0, seed=11)
    first = vllm.generate([(video, q) for q in QUESTIONS], gen).token_ids
    assert vllm.generate([(video, q) for q in QUESTIONS], gen).token_ids == first
    other = vllm.generate([(video, q) for q in QUESTIONS], replace(gen, seed=12)).token_ids
    assert other != first, "another seed must draw another sample"


def test_a_prompt_over_max_model_len_is_refused_by_scissor(models):
    import torch

    from scissor_cli.errors import OptionError
    from scissor_cli.options import GenerationOptions

    _, vllm = models
    with pytest.raises(OptionError, match="--max-model-len"):
        vllm.generate([(torch.randn(MAX_MODEL_LEN, 64), "q")], GenerationOptions(max_new_tokens=2))
    assert vllm.generate([(torch.randn(8, 64), "q")], GenerationOptions(max_new_tokens=2)).texts, "still serving"


# ------------------------------------------------------------------ the CLI, in processes of its own
def _cli_env(tmp_path):
    return {**os.environ, **VLLM_ENV, "SCISSOR_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}


def test_cli_ask_engine_vllm_answers_as_hf(tiny, videos, tmp_path):
    base = [sys.executable, "-m", "scissor_cli", "ask", videos[0], QUESTIONS[0], "-q", QUESTIONS[1], "--model",
            str(tiny), "--frames", "4", "--max-new-tokens", "12", "--dtype", "float32", "--device", "cpu",
            "--json"]  # fmt: skip
    records = {}
    for engine, extra in (("hf", []), ("vllm", ["--engine", "vllm", "--max-model-len", str(MAX_MODEL_LEN)])):
        out = subprocess.run(base + extra, capture_output=True, text=True, timeout=400, env=_cli_env(tmp_path))
        assert out.returncode == 0, out.stderr[-3000:]
        assert "Traceback" not in out.stderr and "INFO" not in out.stderr, out.stderr[-3000:]  # vLLM's log, quiet
        records[engine] = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert [r["answer"] for r in records["vllm"]] == [r["answer"] for r in records["hf"]]
    assert {r["engine"] for r in records["vllm"]} == {"vllm"}


def test_ctrl_c_during_a_vllm_batch_leaves_no_process_behind(tiny, videos, tmp_path):
    profile = tmp_path / "vllm.yaml"  # the profile file's spelling of --engine vllm
    profile.write_text(f"model:\n  engine: vllm\n  max_model_len: {MAX_MODEL_LEN}\n")
    out = tmp_path / "out.jsonl"
    many = [f"Question number {i}?" for i in range(40)]
    cmd = [sys.executable, "-m", "scissor_cli", "batch", str(Path(videos[0]).parent), *sum((["-q", q] for q in many),
           []), "--model", str(tiny), "--frames", "4", "--max-new-tokens", "200", "--dtype", "float32",
           "--device", "cpu", "-o", str(out), "--profile", str(profile), "--batch-size", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_cli_env(tmp_path),
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (out.exists() and out.read_text().count("\n") >= 1):  # vLLM is up and answering
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-3000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        assert proc.returncode == 130, proc.stderr.read().decode()[-3000:]
        _assert_group_gone(proc.pid, "processes of the interrupted run are still alive")  # vLLM's were in it
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_serve_answers_as_hf(models, profile, videos):
    """``scissor serve`` (in a thread, each engine's model passed in): the same answer, and its scissor stats say
    which engine ran."""
    import socket
    import threading
    import urllib.request

    from scissor_cli.serve import ServeOptions
    from scissor_cli.serve.app import run
    from scissor_cli.settings import Overrides, resolve

    flags = {"model": profile.model.model, "frames": 4, "max_new_tokens": 12, "dtype": "float32", "device": "cpu",
             "offline": True}  # fmt: skip
    content = [{"type": "video_url", "video_url": {"url": videos[0]}}, {"type": "text", "text": QUESTIONS[0]}]
    body = json.dumps({"model": profile.model.model, "messages": [{"role": "user", "content": content}]}).encode()
    replies = []
    for vlm in models:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        options = ServeOptions(port=port, allow_files=(str(Path(videos[0]).parent),), allow_urls=False)
        stop = threading.Event()
        overrides = Overrides(**flags, engine=vlm.engine.name)
        server = threading.Thread(target=run, args=(resolve(overrides), options, overrides), daemon=True,
                                  kwargs={"load": lambda v=vlm: v, "stop": stop})  # fmt: skip
        server.start()
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(240):
                try:
                    if urllib.request.urlopen(url + "/health", timeout=5).status == 200:
                        break
                except OSError:
                    time.sleep(0.5)
            request = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})  # fmt: skip
            replies.append(json.loads(urllib.request.urlopen(request, timeout=120).read()))
        finally:
            stop.set()
            server.join(timeout=60)
    hf, vllm = replies
    assert vllm["choices"][0]["message"]["content"] == hf["choices"][0]["message"]["content"] != ""
    assert (hf["scissor"]["engine"], vllm["scissor"]["engine"]) == ("hf", "vllm")


def test_a_model_vllm_cannot_run_is_one_line_exit_5(videos, tmp_path):
    """The default tiny checkpoint's head size (16) is one vLLM's CPU attention cannot run (it would fail at the first
    forward pass): refused in one line before vLLM starts (exit 5), no vLLM process behind."""
    from tiny_checkpoint import build_tiny_checkpoint

    small_heads = build_tiny_checkpoint(tmp_path / "heads16", layout="llava-hf", text_heads=4)
    cmd = [sys.executable, "-m", "scissor_cli", "ask", videos[0], "q", "--model", str(small_heads), "--engine", "vllm",
           "--dtype", "float32", "--device", "cpu", "--max-model-len", str(MAX_MODEL_LEN)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_cli_env(tmp_path),
                            start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 5, err[-3000:]
        assert "vLLM's CPU attention cannot run" in err and "head size is 16" in err, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        for _ in range(60):
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("vLLM processes outlived the failed start")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_lmms_eval_plugin_on_vllm_answers_as_hf(models, tiny, videos, tmp_path):
    """lmms-eval's ``--model scissor`` with ``engine=vllm`` (its class, driven as lmms-eval's evaluator does: task
    docs, generate_until requests): the same greedy answers as ``engine=hf``, and its stats say which engine ran.
    The class starts no second engine: load_model reuses the module's (same settings)."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance

    from scissor_cli.lmms_eval_plugin import Scissor

    docs = [{"visual": [videos[i % 2]], "question": q} for i, q in enumerate(QUESTIONS * 2)]
    gen_kwargs = {"max_new_tokens": 12, "do_sample": False, "until": ["\n\n"]}
    answers, stats = {}, {}
    for engine, extra in (("hf", ""), ("vllm", f",max_model_len={MAX_MODEL_LEN}")):
        argv, sys.argv = sys.argv, ["lmms-eval", "--output_path", str(tmp_path / engine)]
        try:
            lm = Scissor.create_from_arg_string(f"pretrained={tiny},engine={engine},max_frames_num=4,dtype=float32,"
                                                f"device=cpu,offline=true,decode_workers=0{extra}",
                                                {"batch_size": "2", "device": None})  # fmt: skip
        finally:
            sys.argv = argv
        if engine == "vllm":
            assert lm.vlm.engine is models[1].engine, "the running engine is reused"
        lm.task_dict = {"t": {"test": docs}}
        requests = [Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1},
                             arguments=(d["question"], dict(gen_kwargs), lambda doc: doc["visual"], i, "t", "test"))
                    for i, d in enumerate(docs)]  # fmt: skip
        answers[engine] = lm.generate_until(requests)
        lm._stats_out.close()
        stats[engine] = [json.loads(line) for line in lm.stats_file.read_text().splitlines()]
    assert answers["vllm"] == answers["hf"] and all(answers["hf"]), answers
    assert {r["engine"] for r in stats["vllm"] if "doc_id" in r} == {"vllm"}
    assert {r["engine"] for r in stats["hf"] if "doc_id" in r} == {"hf"}


# ------------------------------------------------------------------ an engine that cannot start, through the CLI
# The CLI with every frame decode written to a log file (the first argument): a refused start must leave it empty.
# Batch runs with --decode-workers 0 (its decode-ahead workers are processes of their own). Guarded: vLLM's
# processes are spawned, and a spawned process imports the parent's main module.
DECODE_LOGGING_CLI = """
import sys
from pathlib import Path

import scissor_cli.video as video


def logged(*args, **kwargs):
    with log.open("a") as f:
        f.write("decoded\\n")
    return real(*args, **kwargs)


if __name__ == "__main__":
    log, real = Path(sys.argv.pop(1)), video.sample_frames
    video.sample_frames = logged
    from scissor_cli.cli import main

    main()
"""


def _assert_group_gone(pgid: int, what: str) -> None:
    """Every process of the session ``pgid`` (a command started with ``start_new_session``) ends within 30 s."""
    for _ in range(60):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    pytest.fail(f"{what}: " + subprocess.run(["ps", "-o", "pid,args", "-g", str(pgid)], capture_output=True,
                                             text=True).stdout)  # fmt: skip


def _run_cli(args, tmp_path, env=None, timeout=400):
    """(exit code, stderr, whether a frame was decoded) of the CLI run in a session of its own; no process of it
    may outlive it."""
    driver = tmp_path / "decode_logging_cli.py"
    driver.write_text(DECODE_LOGGING_CLI)
    log = tmp_path / f"decoded-{time.time_ns()}.log"
    proc = subprocess.Popen([sys.executable, str(driver), str(log), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or _cli_env(tmp_path),
                            start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=timeout)
        _assert_group_gone(proc.pid, "processes of the run outlived it")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err, log.exists()


def _one_line(err: str) -> tuple[str, str]:
    """The error and hint lines, asserting stderr holds nothing else (no traceback, no vLLM log; batch's own
    progress note before them)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[:-2] in ([], ["loading the model"]), err[-3000:]
    assert len(lines) >= 2 and lines[-2].startswith("error: ") and lines[-1].startswith("hint: "), err[-3000:]
    return lines[-2], lines[-1]


def test_out_of_memory_at_start_is_one_line_exit_5_before_any_frame_is_decoded(tiny, videos, tmp_path):
    """A --max-model-len whose KV cache does not fit vLLM's (1 GiB, VLLM_CPU_KVCACHE_SPACE): vLLM's engine core
    fails in its own process; its reason comes back as one line whose hint names the knobs, exit 5."""
    env = {**_cli_env(tmp_path), "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}  # past the checkpoint's 4096 positions
    code, err, decoded = _run_cli(["ask", videos[0], "q", "--model", tiny, "--engine", "vllm", "--max-model-len",
                                   "4000000", "--dtype", "float32", "--device", "cpu"], tmp_path, env)  # fmt: skip
    assert code == 5, err[-3000:]
    error, hint = _one_line(err)
    assert "vLLM could not start" in error and "out of memory" in error and "KV cache is needed" in error
    assert hint.startswith("hint: lower --max-model-len (about ") and "VLLM_CPU_KVCACHE_SPACE" in hint
    assert not decoded, "the engine failed before any frame was decoded"


def test_a_model_scissor_cannot_hand_to_vllm_is_one_line_exit_5_in_batch(tiny_qwen25_dir, tiny, videos, tmp_path):
    """Qwen2.5-VL (M-RoPE positions vLLM's prompt embeddings do not get) and a LLaVA-OneVision whose language
    model is not a Qwen2 (vLLM would load it into Qwen2 layers): refused before vLLM starts and before any frame
    is decoded (the same command with --engine hf decodes)."""
    import shutil

    llama = tmp_path / "llava-llama"
    shutil.copytree(tiny, llama)
    config = json.loads((llama / "config.json").read_text())
    config["text_config"]["model_type"] = "llama"
    (llama / "config.json").write_text(json.dumps(config))

    def batch(model, *extra):
        return ["batch", str(Path(videos[0]).parent), "-q", "q", "--model", model, "--dtype", "float32", "--device",
                "cpu", "--decode-workers", "0", "--frames", "4", "--max-new-tokens", "2", *extra]  # fmt: skip

    for model, words in ((tiny_qwen25_dir, "needs explicit (M-RoPE) position ids"),
                         (llama, "its language model is 'llama'")):  # fmt: skip
        code, err, decoded = _run_cli(batch(model, "--engine", "vllm", "-o", tmp_path / "vllm.jsonl"), tmp_path)
        assert code == 5, err[-3000:]
        error, hint = _one_line(err)
        assert words in error and hint == "hint: use --engine hf for this model"
        assert not decoded and not (tmp_path / "vllm.jsonl").read_text().strip(), "no frame decoded, no record"
    code, err, decoded = _run_cli(batch(tiny_qwen25_dir, "-o", tmp_path / "hf.jsonl"), tmp_path)
    assert code == 0 and decoded, f"the hf engine decodes, and the log shows it: {err[-3000:]}"


# ------------------------------------------------------------------ several ranks, each its own vLLM engine
def test_two_torchrun_ranks_with_engine_vllm_merge_the_answers_of_one_hf_process(tiny, videos, tmp_path):
    """``torchrun --nproc_per_node 2 -m scissor_cli batch --engine vllm``: each rank starts its own vLLM engine
    (torchrun's variables kept from vLLM's processes), answers its videos, and rank 0 merges: the records of one
    hf process."""
    folder = str(Path(videos[0]).parent)
    # device auto: each rank looks for GPUs of its own (batch.ranks.vllm_rank_device), finds none, runs on the CPU
    common = ["-m", "scissor_cli", "batch", folder, "-q", QUESTIONS[0], "-q", QUESTIONS[1], "--model", str(tiny),
              "--frames", "4", "--max-new-tokens", "12", "--dtype", "float32", "--device", "auto",
              "--decode-workers", "0"]  # fmt: skip
    hf_out, vllm_out = tmp_path / "hf.jsonl", tmp_path / "vllm.jsonl"
    env = _cli_env(tmp_path)
    out = subprocess.run([sys.executable, *common, "-o", str(hf_out)], capture_output=True, text=True, timeout=300,
                         env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *common,
           "--engine", "vllm", "--max-model-len", str(MAX_MODEL_LEN), "-o", str(vllm_out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, "SCISSOR_BATCH_BARRIER_S": "400"}, start_new_session=True)  # fmt: skip
    try:
        text = proc.communicate(timeout=540)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            text = proc.communicate()[0]
    assert proc.returncode == 0, text[-4000:]
    hf = {r["id"]: r for r in map(json.loads, hf_out.read_text().splitlines())}
    vllm = {r["id"]: r for r in map(json.loads, vllm_out.read_text().splitlines())}
    assert len(hf) == 4 and set(vllm) == set(hf), "every job once, merged from both ranks' part files"
    assert {r["engine"] for r in vllm.values()} == {"vllm"} and all(r["status"] == "ok" for r in vllm.values())
    assert {i: r["answer"] for i, r in vllm.items()} == {i: r["answer"] for i, r in hf.items()}
    assert not list(tmp_path.glob("vllm.jsonl.part-*")), "the part files were merged"


def test_the_original_llava_next_layout_answers_as_hf(profile, tmp_path):
    """vLLM reads the LLaVA-NeXT layout's names (model.layers.*, model.mm_projector.* skipped) through the same
    mapper. Last in the module: it replaces the module's engine (one per process)."""
    import torch
    from tiny_checkpoint import build_tiny_checkpoint

    from scissor_cli.model import load_model
    from scissor_cli.options import GenerationOptions

    next_dir = build_tiny_checkpoint(tmp_path / "llava-next", layout="llava-next", text_heads=2)
    opts = replace(profile.model, model=str(next_dir))
    hf, vllm = load_model(opts), load_model(replace(opts, engine="vllm", max_model_len=MAX_MODEL_LEN))
    try:
        assert vllm.layout == "llava-next" and vllm.engine.name == "vllm"
        video = torch.randn(30, 64)
        gen = GenerationOptions(max_new_tokens=16)
        expected = hf.generate([(video, q) for q in QUESTIONS], gen).token_ids
        assert vllm.generate([(video, q) for q in QUESTIONS], gen).token_ids == expected
        assert all(len(ids) > 3 for ids in expected), "answers long enough to compare"
    finally:
        vllm.engine.close()
