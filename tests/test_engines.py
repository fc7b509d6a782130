"""The engine seam without vLLM installed (default tier): the options and their validation, the engine in records
and in batch's config hash, the vision-only half scissor loads for ``--engine vllm``, the derived folder vLLM
reads, the refusals (not installed, a family that needs position ids), and ``VLLMEngine.generate``'s own logic
(streaming, stopping rows, a prompt over --max-model-len, Ctrl-C) against a stand-in for vLLM's step API.
The same answers from real vLLM: tests/test_engine_vllm.py (``make test-vllm``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from scissor_cli import engines
from scissor_cli.engines import Prompts, refuse_position_ids, weights
from scissor_cli.errors import ModelError, OptionError
from scissor_cli.options import GenerationOptions, ModelOptions, Profile, validate
from scissor_cli.settings import Overrides, resolve, spelled


def build_profile(profile=None, **fields):
    """What the CLI's shared flags make of ``fields``, errors worded with the flags' names."""
    try:
        return resolve(Overrides(profile=profile, **fields))
    except OptionError as e:
        raise spelled(e, "cli") from e


HAS_VLLM = importlib.util.find_spec("vllm") is not None


# ------------------------------------------------------------------ options
def test_engine_flag_values_and_vllm_knobs_are_validated():
    assert build_profile(None, engine="VLLM").model.engine == "vllm"
    assert build_profile(None).model.engine == "hf"
    with pytest.raises(OptionError, match="--engine") as e:
        build_profile(None, engine="tgi")
    assert "hf or vllm" in e.value.hint
    with pytest.raises(OptionError, match="--gpu-memory-utilization"):
        build_profile(None, engine="vllm", gpu_memory_utilization=1.5)
    with pytest.raises(OptionError, match="--max-model-len"):
        build_profile(None, engine="vllm", max_model_len=0)
    with pytest.raises(OptionError, match="--tensor-parallel-size"):
        build_profile(None, engine="vllm", tensor_parallel_size=0)
    # a vLLM knob without --engine vllm would silently do nothing: refused, naming the fix
    with pytest.raises(OptionError, match="vLLM setting") as e:
        build_profile(None, max_model_len=4096)
    assert "set --engine to vllm" in e.value.hint
    p = build_profile(None, engine="vllm", tensor_parallel_size=8, gpu_memory_utilization=0.8, max_model_len=4096)
    assert (p.model.tensor_parallel_size, p.model.gpu_memory_utilization, p.model.max_model_len) == (8, 0.8, 4096)
    assert engines.resolve(" Vllm ") == "vllm"
    with pytest.raises(OptionError):
        engines.resolve("tgi")


def test_the_engine_is_in_batchs_config_hash_and_its_knobs_are_not():
    from scissor_cli.batch import config_hash, run_config

    hf, vllm = Profile(), validate(replace(Profile(), model=replace(ModelOptions(), engine="vllm")))
    assert "engine" not in run_config(hf)["model"], "hf, the default: older outputs' hashes stay valid"
    assert run_config(vllm)["model"]["engine"] == "vllm"
    assert config_hash(run_config(hf)) != config_hash(run_config(vllm)), "a resumed run would mix engines"
    bigger = replace(vllm, model=replace(vllm.model, max_model_len=8192, tensor_parallel_size=2))
    assert config_hash(run_config(bigger)) == config_hash(run_config(vllm)), "knobs change speed, not answers"


# ------------------------------------------------------------------ refusals
@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_vllm_not_installed_is_one_line_exit_5_before_the_checkpoint_or_video(tmp_path):
    from scissor_cli.model import load_model

    with pytest.raises(ModelError, match="needs vLLM") as e:  # checked before the (missing) checkpoint
        load_model(ModelOptions(model=str(tmp_path / "no-such-model"), engine="vllm", offline=True))
    assert e.value.exit_code == 5 and "--engine hf" in e.value.hint
    env = {**os.environ, "SCISSOR_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    # the engine is refused before the (missing) model is looked for and before the video is decoded
    video = Path(__file__).parent.parent / "samples" / "bigbuckbunny.mp4"
    cmd = [sys.executable, "-m", "scissor_cli", "ask", str(video), "q", "--model", str(tmp_path / "m"), "--engine",
           "vllm"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 5, out.stderr
    assert "needs vLLM" in out.stderr and "Traceback" not in out.stderr


def test_a_vllm_knob_without_engine_vllm_is_a_usage_error(tmp_path):
    from typer.testing import CliRunner

    from scissor_cli.cli import app

    result = CliRunner().invoke(app, ["ask", str(tmp_path / "v.mp4"), "q", "--max-model-len", "1024"])
    assert result.exit_code == 2
    assert "--max-model-len is a vLLM setting, but --engine is 'hf'" in result.output
    result = CliRunner().invoke(app, ["ask", str(tmp_path / "v.mp4"), "q", "--engine", "tgi"])
    assert result.exit_code == 2 and "--engine 'tgi' is out of range" in result.output
    result = CliRunner().invoke(app, ["inspect", "--help"])
    assert "--engine" not in result.output, "inspect runs no LLM"


def test_a_family_that_needs_position_ids_is_refused_with_vllm_only(monkeypatch, tiny_qwen25_dir):
    refuse_position_ids("hf", "Qwen2-VL", True)  # the hf engine passes position ids through
    refuse_position_ids("vllm", "LLaVA-OneVision", False)
    with pytest.raises(ModelError, match="position ids") as e:
        refuse_position_ids("vllm", "Qwen2-VL", True)
    assert e.value.exit_code == 5 and "--engine hf" in e.value.hint
    from scissor_cli import model
    from scissor_cli.engines import vllm as vllm_engine

    # a real Qwen2.5-VL checkpoint: its family's ``positions`` flag refuses it before vLLM starts or a weight loads
    monkeypatch.setattr(vllm_engine, "check_installed", lambda: None)
    monkeypatch.setattr(vllm_engine, "start", lambda *a: pytest.fail("vLLM started for a Qwen checkpoint"))
    with pytest.raises(ModelError, match="cannot run Qwen2.5-VL: its LLM needs explicit"):
        model.load_model(ModelOptions(model=str(tiny_qwen25_dir), engine="vllm", offline=True, device="cpu"))


# ------------------------------------------------------------------ records
def test_every_answer_record_says_which_engine_ran(tiny_hf_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from scissor_cli.cli import app
    from scissor_cli.pipeline import Answer

    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "cache"))
    from media import pattern_clip

    clip = pattern_clip(tmp_path / "clip.mp4")
    result = CliRunner().invoke(app, ["ask", clip, "What?", "--model", str(tiny_hf_dir), "--frames", "2",
                                      "--max-new-tokens", "2", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    [record] = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert record["engine"] == "hf"
    fields = {f: None for f in Answer.__dataclass_fields__ if f not in ("engine", "profile", "budget")}
    answer = Answer(**{**fields, "tokens": {}, "timestamps": [], "timings_s": {}, "tflops": {}}, engine="vllm")
    assert answer.to_dict()["engine"] == "vllm"  # ask/batch/chat JSON and serve's scissor object are this dict


# ------------------------------------------------------------------ weights once
def test_the_vision_half_loads_no_llm_layers_and_embeds_as_the_whole_model(tiny_hf_dir, tiny_next_dir, monkeypatch):
    """With --engine vllm scissor builds LLaVA-OneVision with 0 decoder layers and the LM head tied: the vision
    tower, projector and embedding table are the whole model's, bit for bit; nothing else is allocated."""
    import torch

    from scissor_cli.engines import vllm as vllm_engine
    from scissor_cli.model import load_model

    started = []

    class FakeEngine:
        name = "vllm"

        def bind(self, vlm):
            return self

    monkeypatch.setattr(vllm_engine, "check_installed", lambda: None)
    monkeypatch.setattr(vllm_engine, "start", lambda *a: started.append(a) or FakeEngine())
    for path in (tiny_hf_dir, tiny_next_dir):
        full = load_model(ModelOptions(model=str(path), offline=True, device="cpu"))
        half = load_model(ModelOptions(model=str(path), offline=True, device="cpu", engine="vllm"))
        assert half.engine.name == "vllm" and len(half.hf_model.model.language_model.layers) == 0
        assert half.n_layers == full.n_layers == 2  # what the LLM has (the FLOPs estimate)
        n_full = sum(p.numel() for p in full.hf_model.parameters())
        n_half = sum(p.numel() for p in half.hf_model.parameters())
        layers = sum(p.numel() for p in full.hf_model.model.language_model.layers.parameters())
        assert n_half <= n_full - layers, (n_half, n_full, layers)
        frames = torch.randint(0, 255, (2, 40, 40, 3), dtype=torch.uint8).numpy()
        video = full.encode(frames)
        assert torch.equal(half.encode(frames), video)
        assert torch.equal(half.embed_request(video, "What?"), full.embed_request(video, "What?"))
        model_dir, text_config, dtype, opts, _name = started[-1]
        assert text_config["num_hidden_layers"] == 2 and dtype == str(full.dtype)[6:] and opts.engine == "vllm"


def test_vllm_reads_the_checkpoint_through_links_and_a_text_config(tiny_hf_dir):
    import shutil

    config = json.loads((tiny_hf_dir / "config.json").read_text())["text_config"]
    folder = weights.language_model_folder(tiny_hf_dir, config, "bfloat16")
    try:
        written = json.loads((folder / "config.json").read_text())
        assert written["architectures"] == [weights.ARCHITECTURE] and written["model_type"] == "qwen2"
        assert written["hidden_size"] == config["hidden_size"] and written["dtype"] == "bfloat16"
        links = sorted(folder.glob("*.safetensors"))
        assert links and all(p.is_symlink() and p.resolve().parent == tiny_hf_dir.resolve() for p in links)
    finally:
        shutil.rmtree(folder)
    llm = ["model.language_model.layers.0.mlp.up_proj.weight", "lm_head.weight",
           "language_model.model.layers.1.self_attn.q_proj.weight"]  # fmt: skip
    info = {"unexpected_keys": [*llm, "model.vision_tower.x"]}
    assert weights.drop_llm_keys(info)["unexpected_keys"] == ["model.vision_tower.x"]


# ------------------------------------------------------------------ VLLMEngine.generate against a stand-in
class FakeLLMEngine:
    """vLLM's LLMEngine as VLLMEngine drives it: add_request / step (cumulative outputs) / abort_request. Each
    request answers ``script`` one token per step, then eos (2)."""

    def __init__(self, script, fail_at_step=None, failure=KeyboardInterrupt):
        self.script, self.fail_at_step, self.failure = script, fail_at_step, failure
        self.requests, self.aborted, self.n_steps = {}, [], 0
        self.model_config = SimpleNamespace(max_model_len=64)

    def add_request(self, rid, prompt, params):
        assert prompt["prompt_embeds"].device.type == "cpu"
        self.requests[rid] = 0
        return rid + "-internal"  # vLLM's own id: outputs and aborts still use ours

    def step(self):
        assert self.requests, "step() with nothing queued: vLLM would block here for ever"
        self.n_steps += 1
        if self.n_steps == self.fail_at_step:
            raise self.failure
        outs = []
        for rid in list(self.requests):
            self.requests[rid] += 1
            n = self.requests[rid]
            ids = (self.script + [2])[:n]
            done = n > len(self.script)
            outs.append(SimpleNamespace(request_id=rid, outputs=[SimpleNamespace(token_ids=ids)], finished=done,
                                        num_cached_tokens=0))  # fmt: skip
            if done:
                del self.requests[rid]
        return outs

    def abort_request(self, ids):
        self.aborted += list(ids)
        for rid in ids:
            self.requests.pop(rid, None)


def _vllm_engine(fake, tokenizer):
    from scissor_cli.engines.vllm import VLLMEngine

    engine = VLLMEngine(SimpleNamespace(llm_engine=fake), Path("/nonexistent"), ("k",))
    vlm = SimpleNamespace(tokenizer=tokenizer, _eos_ids=lambda: [2], suppress_ids=[], max_positions=4096)
    engine.bind(vlm)
    assert vlm.max_positions == 64  # the context scissor checks against is vLLM's
    return engine


def _prompts(lengths):
    import torch

    rows = [torch.zeros(n, 8) for n in lengths]
    return Prompts(rows=rows, ids=[([], [])] * len(rows), videos=[object()] * len(rows), n_video=[0] * len(rows),
                   t0=0.0)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    from tiny_checkpoint import build_tokenizer

    return build_tokenizer()


def test_vllm_generate_streams_the_first_row_and_stops_rows(tokenizer, monkeypatch):
    pytest.importorskip("torch")
    import scissor_cli.engines.vllm as vllm_engine

    monkeypatch.setattr(vllm_engine.VLLMEngine, "_params", lambda self, gen: None)
    script = tokenizer("The cat jumps onto the table", add_special_tokens=False).input_ids
    fake = FakeLLMEngine(script)
    engine = _vllm_engine(fake, tokenizer)
    pieces = []
    out = engine.generate(_prompts([5, 7]), GenerationOptions(), on_text=pieces.append)
    expected = tokenizer.decode(script).strip()
    assert out.texts == [expected, expected] and "".join(pieces) == expected and len(pieces) > 1
    assert out.n_new_tokens == [len(script)] * 2 and out.n_prompt_tokens == [5, 7] and fake.aborted == []
    # should_stop flags one row: only it is aborted, with what it had; the other row finishes
    fake = FakeLLMEngine(script)
    engine = _vllm_engine(fake, tokenizer)
    calls = []
    out = engine.generate(_prompts([5, 5]), GenerationOptions(),
                          should_stop=lambda: calls.append(1) or [len(calls) >= 2, False])  # fmt: skip
    assert out.n_new_tokens == [2, len(script)] and len(fake.aborted) == 1


def test_vllm_generate_refuses_an_overlong_prompt_and_aborts_on_ctrl_c(tokenizer, monkeypatch):
    pytest.importorskip("torch")
    import scissor_cli.engines.vllm as vllm_engine

    monkeypatch.setattr(vllm_engine.VLLMEngine, "_params", lambda self, gen: None)
    fake = FakeLLMEngine([5, 6, 7])
    engine = _vllm_engine(fake, tokenizer)
    with pytest.raises(OptionError, match="--max-model-len") as e:
        engine.generate(_prompts([10, 64]), GenerationOptions())
    assert fake.requests == {} and "raise --max-model-len" in e.value.hint  # nothing was queued
    fake = FakeLLMEngine([5, 6, 7], fail_at_step=2)
    engine = _vllm_engine(fake, tokenizer)
    with pytest.raises(KeyboardInterrupt):
        engine.generate(_prompts([4, 4]), GenerationOptions())
    assert len(fake.aborted) == 2 and fake.requests == {}, "Ctrl-C left requests queued in vLLM"


def test_vllm_generate_refuses_a_positions_familys_prompts(tokenizer, monkeypatch):
    """Prompts a ``positions`` family prepared (ids, M-RoPE positions, vision outputs) never reach vLLM, which
    would run them with 1-D positions; load_model refuses such a family first, this guards any other caller."""
    torch = pytest.importorskip("torch")
    import scissor_cli.engines.vllm as vllm_engine

    monkeypatch.setattr(vllm_engine.VLLMEngine, "_params", lambda self, gen: None)
    fake = FakeLLMEngine([5, 6, 7])
    engine = _vllm_engine(fake, tokenizer)
    inputs = {"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.tensor([[0, 1, 1, 1]])}
    prompts = Prompts(rows=[], ids=[], videos=[object()], n_video=[], t0=0.0, inputs=inputs)
    assert prompts.lengths == [3], "a padded row's length is its mask's ones"
    with pytest.raises(ModelError, match="position ids"):
        engine.generate(prompts, GenerationOptions())
    assert fake.requests == {} and fake.n_steps == 0


def test_a_vllm_engine_that_dies_mid_answer_is_one_line_exit_5(tokenizer, monkeypatch):
    pytest.importorskip("torch")
    import scissor_cli.engines.vllm as vllm_engine

    class EngineDeadError(Exception):  # vLLM's, by name (vllm.v1.engine.exceptions)
        pass

    monkeypatch.setattr(vllm_engine.VLLMEngine, "_params", lambda self, gen: None)
    closed = []
    monkeypatch.setattr(vllm_engine.VLLMEngine, "close", lambda self: closed.append(1) or setattr(self, "llm", None))
    engine = _vllm_engine(FakeLLMEngine([5, 6, 7], fail_at_step=2, failure=EngineDeadError("core died")), tokenizer)
    with pytest.raises(ModelError, match="vLLM's engine stopped while answering: core died") as e:
        engine.generate(_prompts([4]), GenerationOptions())
    assert e.value.exit_code == 5 and closed == [1]
    with pytest.raises(ModelError, match="shut down"):  # later calls fail at once
        engine.generate(_prompts([4]), GenerationOptions())


# ------------------------------------------------------------------ several ranks, each with its own vLLM engine
def test_each_rank_takes_its_own_gpus_for_its_vllm_engine(monkeypatch):
    """Rank r of N with --tensor-parallel-size K: its vision tower on cuda:<r*K>, its engine on GPUs r*K..r*K+K-1
    (as CUDA_VISIBLE_DEVICES entries, mapped through the launcher's own list); too few GPUs is exit 2."""
    import torch

    from scissor_cli.batch import shard_device
    from scissor_cli.batch.ranks import vllm_rank_device
    from scissor_cli.engines.vllm import engine_gpus

    assert [vllm_rank_device(r, 4, 2, 8) for r in range(4)] == ["cuda:0", "cuda:2", "cuda:4", "cuda:6"]
    assert [engine_gpus(f"cuda:{2 * r}", 2, list("01234567")) for r in range(4)] == [
        ["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]  # fmt: skip
    assert engine_gpus("cuda:2", 2, ["7", "6", "5", "4"]) == ["5", "4"], "the launcher's CUDA_VISIBLE_DEVICES"
    assert engine_gpus("cuda", 2, list("01")) is None and engine_gpus("cpu", 1, []) is None
    assert vllm_rank_device(1, 2, 1, 0) is None, "no GPU: nothing to assign"
    assert vllm_rank_device(1, 2, 2, 2) is None, "a process that sees only its own K GPUs keeps them"
    with pytest.raises(OptionError, match="need 8 GPUs") as e:
        vllm_rank_device(0, 4, 2, 6)
    assert e.value.exit_code == 2 and "at most 3 processes" in e.value.hint
    with pytest.raises(OptionError, match="needs 4 GPUs per process; this process sees 2"):
        vllm_rank_device(0, 1, 4, 2)
    with pytest.raises(OptionError, match="needs GPUs 6..7; 7 are visible"):
        engine_gpus("cuda:6", 2, list("0123456"))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    for key, value in {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(key, value)
    vllm = validate(replace(Profile(), model=replace(ModelOptions(), engine="vllm", tensor_parallel_size=2)))
    assert shard_device(vllm).model.device == "cuda:2", "LOCAL_RANK 1 of 4 on this machine, 2 GPUs each"
    assert shard_device(Profile()).model.device == "cuda:1", "hf: one GPU per process, as before"
    three = replace(vllm, model=replace(vllm.model, tensor_parallel_size=3))
    with pytest.raises(OptionError, match="4 processes on this machine"):
        shard_device(three)


def test_vllm_starts_without_the_launchers_variables_and_on_its_gpus(monkeypatch):
    """torchrun's variables are scissor's ranks, not vLLM's: while vLLM's processes start (they inherit the
    environment) they are gone and CUDA_VISIBLE_DEVICES names the rank's GPUs; afterwards all is as it was."""
    import torch.distributed as dist

    from scissor_cli.engines.vllm import engine_env

    launcher = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "x",
                "MASTER_PORT": "29500", "GROUP_RANK": "0", "TORCHELASTIC_USE_AGENT_STORE": "True",
                "TORCHELASTIC_RUN_ID": "none"}  # fmt: skip
    for key, value in launcher.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # batch's gloo group is up in this process
    before = dict(os.environ)
    with engine_env(["2", "3"]):
        seen = dict(os.environ)
    assert not set(launcher) & set(seen), "no launcher variable reaches vLLM's processes"
    assert seen["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert seen["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn", "a forked engine core would inherit the group"
    assert dict(os.environ) == before
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    with engine_env(None):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3" and "VLLM_WORKER_MULTIPROC_METHOD" not in os.environ


# ------------------------------------------------------------------ a vLLM that cannot start
# vLLM 0.32's own words (its engine core's log and traceback, as its processes write them to stderr)
KV_TOO_SMALL = """(EngineCore pid=8479) ERROR 12-07 22:53:54 [core.py:1510] EngineCore failed to start.
(EngineCore pid=8479) ERROR 12-07 22:53:54 [core.py:1510] Traceback (most recent call last):
(EngineCore pid=8479) ERROR 12-07 22:53:54 [core.py:1510]     raise ValueError(
(EngineCore pid=8479) ERROR 12-07 22:53:54 [core.py:1510] ValueError: To serve at least one request with the model's \
max seq len (4000000), (1.91 GiB KV cache is needed, which is larger than the available KV cache memory (1.0 GiB). \
Based on the available memory, the estimated maximum model length is 2097024. Try increasing `gpu_memory_utilization` \
(which also controls CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the engine. See \
https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.
Process EngineCore:
Traceback (most recent call last):
  File "multiprocessing/process.py", line 314, in _bootstrap
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""
GPU_BUSY = """(EngineCore pid=1) ERROR [core.py:1510] ValueError: Free memory on device cuda:0 (10.2/79.1 GiB) on \
startup is less than desired GPU memory utilization (0.9, 71.2 GiB). Decrease GPU memory utilization or reduce GPU \
memory used by other processes.
"""
CUDA_OOM = """(Worker pid=2) ERROR torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 \
has a total capacity of 79.1 GiB of which 1.2 GiB is free.
"""


def test_a_failed_vllm_start_is_one_line_naming_the_knob():
    from scissor_cli.engines.vllm import start_error

    wrapper = RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): {}")
    e = start_error("m", wrapper, KV_TOO_SMALL)
    assert e.exit_code == 5
    assert e.message == ("vLLM could not start m's language model: out of memory: ValueError: To serve at least one "
                         "request with the model's max seq len (4000000), (1.91 GiB KV cache is needed, which is "
                         "larger than the available KV cache memory (1.0 GiB). Based on the available memory, the "
                         "estimated maximum model length is 2097024.")  # fmt: skip
    assert e.hint.startswith("lower --max-model-len (about 2,097,024 fits)") and "VLLM_CPU_KVCACHE_SPACE" in e.hint
    e = start_error("m", wrapper, GPU_BUSY)
    assert "out of memory: ValueError: Free memory on device" in e.message and "Decrease" not in e.message
    assert e.hint.startswith("lower --gpu-memory-utilization")
    e = start_error("m", wrapper, CUDA_OOM)
    assert "out of memory: torch.OutOfMemoryError: CUDA out of memory" in e.message
    assert "--tensor-parallel-size" in e.hint
    e = start_error("m", ValueError("max_model_len\n (9) is\tbad"), "nothing parsable\n")
    assert e.message == "vLLM could not start m's language model: ValueError: max_model_len (9) is bad"


def test_a_language_model_scissor_cannot_hand_to_vllm_is_refused():
    from scissor_cli.engines.vllm import _check_language_model

    _check_language_model({"model_type": "qwen2"}, "m")
    with pytest.raises(ModelError, match="its language model is 'llama'") as e:
        _check_language_model({"model_type": "llama"}, "m")
    assert e.value.exit_code == 5 and e.value.hint == "use --engine hf for this model"


HOLD_STDERR = """
import subprocess, sys
from scissor_cli.engines.vllm import _ChildStderr

def child(text):  # a process started while the log is held writes to the stderr it inherited
    subprocess.run([sys.executable, "-c", f"import sys; sys.stderr.write({text!r})"], check=True)

log = _ChildStderr()
if sys.argv[1] == "no":  # run with fd 2 closed
    log.started()
    print(repr(log.failed(wait_s=0)))
    sys.exit()
child("Traceback (most recent call last):\\nValueError: boom\\n")
if sys.argv[1] == "failed":
    print(repr(log.failed()))
else:
    log.started()
    child("after the start\\n")
"""


@pytest.mark.parametrize("how", ["failed", "started", "no stderr"])
def test_vllms_stderr_is_held_while_it_starts(tmp_path, how):
    """While vLLM starts, what its processes write is held: a failed start gets it (and stderr stays clean), a
    good one passes it on, and the processes' later writes go to stderr as they come. No stderr at all: nothing
    breaks."""
    script = tmp_path / "hold.py"
    script.write_text(HOLD_STDERR)
    cmd = [sys.executable, str(script), how.split()[0]]
    if how == "no stderr":
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60, text=True,
                             preexec_fn=lambda: os.close(2))  # fmt: skip
        assert out.returncode == 0 and out.stdout.strip() == "''", out.stdout
        return
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if how == "failed":
        assert out.stdout.strip() == repr("Traceback (most recent call last):\nValueError: boom\n") and out.stderr == ""
    else:
        assert out.stderr == "Traceback (most recent call last):\nValueError: boom\nafter the start\n"
