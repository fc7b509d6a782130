"""Shared fixtures: tiny random LLaVA-OneVision checkpoints, built once per test session (about 1 s each after
the ~8 s transformers import), in both layouts. CLI and batch tests reuse them."""

from __future__ import annotations

import pytest
from tiny_checkpoint import build_tiny_checkpoint


@pytest.fixture(scope="session")
def _session_home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(autouse=True)
def _isolated_user_settings(monkeypatch, _session_home):
    """No test reads the developer's own settings (~/.config/scissor/config.yaml, SCISSOR_MODEL, ...) or writes to
    their feature cache; tests that need these set them."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(_session_home / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(_session_home / "state"))  # chat's readline history
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(_session_home / "cache"))
    monkeypatch.setenv("SCISSOR_PROFILES_DIR", str(_session_home / "profiles"))
    for var in ("SCISSOR_CONFIG", "SCISSOR_MODEL", "SCISSOR_DEBUG"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """A llava-hf layout checkpoint directory (Path)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llava-hf", layout="llava-hf", seed=0)


@pytest.fixture(scope="session")
def tiny_next_dir(tmp_path_factory):
    """The same weights in the original LLaVA-NeXT / lmms-lab layout (``model_type: llava_qwen``) (Path)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llava-next", layout="llava-next", seed=0)


@pytest.fixture(scope="session")
def tiny_zip_dir(tmp_path_factory):
    """A LLaVA-Scissor baseline twin (``model_type: llava_qwen_zip``, ``mm_zip_tau`` 0.8, ``mm_zip_epsilon`` 0.1)."""
    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("tiny") / "llava-zip", layout="llava-next", seed=0, zip_tau=0.8, zip_epsilon=0.1
    )


@pytest.fixture(scope="session")
def tiny_qwen25_dir(tmp_path_factory):
    """A tiny random Qwen2.5-VL checkpoint in Hugging Face format (Path)."""
    from tiny_checkpoint import build_tiny_qwen

    return build_tiny_qwen(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", family="qwen2_5_vl", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory):
    """A tiny random Qwen3-VL checkpoint (DeepStack on both vision layers) in Hugging Face format (Path)."""
    from tiny_checkpoint import build_tiny_qwen

    return build_tiny_qwen(tmp_path_factory.mktemp("tiny") / "qwen3_vl", family="qwen3_vl", seed=0)
