"""GPU tier (``-m gpu``, deselected by default; ``make gpu-check`` runs it): SCC on CUDA equals SCC on CPU at the
real size on video-like tokens, and the tiny checkpoint answers in bfloat16 and float16 on CUDA like in float32.
Each test skips without CUDA; ``bench/gpu_check.py`` refuses to start without it, so a GPU owner's run cannot pass
by skipping. The last test (not gpu-marked) checks that refusal on machines without CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scc_reference import video_like_tokens

from scissor_cli.scc import compress

ROOT = Path(__file__).resolve().parent.parent
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("setting", [{"tau": 0.9}, {"tau": 0.8}, {"tau": 0.9, "budget": 0.1}], ids=str)
def test_scc_cuda_equals_cpu_on_video_like_tokens(setting):
    x = video_like_tokens(32, 196, 896, seed=7)  # [32, 196, 896]: 32 frames of the 0.5B model's tokens
    cpu = compress(x, generator=torch.Generator().manual_seed(0), **setting)
    gpu = compress(x.cuda(), generator=torch.Generator(device="cuda").manual_seed(0), **setting)
    assert gpu.spatial_per_frame == cpu.spatial_per_frame, "CUDA spatial step kept other tokens per frame"
    assert (gpu.n_spatial, gpu.n_output, gpu.tau) == (cpu.n_spatial, cpu.n_output, cpu.tau), "CUDA counts differ"
    assert torch.equal(gpu.assignment.cpu(), cpu.assignment), "CUDA merged tokens into other kept tokens"
    assert torch.allclose(gpu.tokens.cpu(), cpu.tokens, atol=1e-4), (gpu.tokens.cpu() - cpu.tokens).abs().max()


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_paths_on_cuda(tiny_hf_dir, dtype):
    from scissor_cli.model import load_model
    from scissor_cli.options import ModelOptions, Profile
    from scissor_cli.pipeline import answer

    clip = str(ROOT / "samples" / "bigbuckbunny.mp4")
    profile = Profile().override(sampling={"n_frames": 8}, generation={"max_new_tokens": 8}, model={"cache": False})
    half = load_model(ModelOptions(model=str(tiny_hf_dir), device="cuda", dtype=dtype))
    full = load_model(ModelOptions(model=str(tiny_hf_dir), device="cuda", dtype="float32"))
    assert str(half.dtype) == f"torch.{dtype}" and half.device.type == "cuda"
    [a] = answer(half, clip, "What is happening?", profile)
    [b] = answer(full, clip, "What is happening?", profile)
    assert a.dtype == dtype and a.tokens["original"] == b.tokens["original"] == 8 * half.tokens_per_frame
    assert a.answer.strip(), "half precision generated nothing"
    # features in half precision stay close to float32 (no overflow to inf/nan in the tower or the pooling)
    from scissor_cli.video import sample_frames

    frames = sample_frames(clip, n_frames=8).frames
    f_half, f_full = half.encode(frames).float(), full.encode(frames)
    assert torch.isfinite(f_half).all(), f"{dtype} features overflowed"
    cos = torch.nn.functional.cosine_similarity(f_half.flatten(0, 1), f_full.flatten(0, 1), dim=-1)
    assert cos.min() > 0.99, f"{dtype} features drift from float32: min cosine {cos.min().item():.4f}"
    c = compress(half.encode(frames), tau=0.9, budget=0.1)
    assert c.tokens.dtype == getattr(torch, dtype) and c.n_output <= 0.1 * c.n_input


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without CUDA")
def test_gpu_check_refuses_to_run_without_cuda():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("gpu-check: no CUDA GPU"), proc.stderr
    assert "torch" in lines[0] and lines[1].startswith("hint: "), proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout.strip(), "nothing ran"
