"""settings: one ``resolve`` for every front end, and errors that carry their keys so each front end words them its
own way (``--frames``, ``/frames``, ``frames``) by formatting, not by rewriting text."""

from __future__ import annotations

import dataclasses
import os

import pytest

from scissor_cli.errors import OptionError
from scissor_cli.options import Profile, validate
from scissor_cli.settings import FRONT_ENDS, OVERRIDES, SPELLING, Overrides, apply, resolve, spelled


def error(**overrides) -> OptionError:
    with pytest.raises(OptionError) as e:
        resolve(Overrides(**overrides))
    return e.value


@pytest.mark.parametrize(
    "front_end, message, hint",
    [
        (None, "sampling.n_frames = 0 is out of range", "sampling.n_frames must be an integer from 1 to 4096"),
        ("cli", "--frames 0 is out of range", "--frames must be an integer from 1 to 4096"),
        ("chat", "/frames 0 is out of range", "/frames must be an integer from 1 to 4096"),
        ("lmms", "frames 0 is out of range", "frames must be an integer from 1 to 4096"),
        ("serve", "frames 0 is out of range", "frames must be an integer from 1 to 4096"),
    ],
)
def test_a_range_error_names_its_key_in_each_front_ends_words(front_end, message, hint):
    e = error(frames=0)
    assert e.keys == ("sampling.n_frames",)
    shown = e if front_end is None else spelled(e, front_end)
    assert (shown.message, shown.hint) == (message, hint)


def test_errors_about_two_keys_name_both():
    e = error(tau=0.8, tokens=5)
    assert e.keys == ("compression.tau", "compression.tokens")
    assert spelled(e, "cli").message == "--tau and --tokens are both given: a budget searches tau itself"
    assert spelled(e, "cli").hint == "drop --tau to keep the budget, or drop --tokens to use that tau"
    assert spelled(e, "serve").message.startswith("tau and tokens are both given")
    end = spelled(error(start=3.0, end=1.0), "cli")
    assert (end.message, end.hint) == ("--end 1.0 is out of range", "--end must be greater than --start (3.0)")
    off = spelled(error(no_compress=True, tau=0.5, epsilon=0.1), "chat")
    assert off.message == "/off contradicts /tau, compression.epsilon", "a key chat cannot set keeps its dotted name"


def test_values_are_never_reworded():
    """A value that reads like a key (or holds braces) stays as typed: spelling formats the keys, it does not
    search and replace the text."""
    e = spelled(error(device="compression.tau"), "cli")
    assert e.message == "--device 'compression.tau' is out of range", e.message
    e = spelled(error(memory_budget="{0}x"), "cli")
    assert e.message == "--memory-budget '{0}x' is out of range", e.message


def test_every_override_is_a_setting_with_a_cli_spelling():
    """Each Overrides field reaches the profile (no field is silently ignored) and has a row in SPELLING."""
    changed = {
        "model": "other/model", "revision": "v1", "tau": 0.5, "tau_temporal": 0.4, "epsilon": 0.2, "retention": 0.5,
        "tokens": 7, "no_compress": True, "frames": 3, "fps": 2.0, "start": 0.5, "end": 4.0, "memory_budget": "1G",
        "max_new_tokens": 9, "temperature": 0.5, "top_p": 0.7, "seed": 11, "device": "cpu", "dtype": "fp16",
        "offline": True, "no_cache": True, "newline": True, "engine": "vllm", "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.8, "max_model_len": 1024,
    }  # fmt: skip
    assert set(changed) | {"profile"} == set(OVERRIDES)
    base = Profile()
    for name, value in changed.items():
        vllm = {"engine": "vllm"} if name in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len") else {}
        changed_p = apply(base, Overrides(**{name: value, **vllm}))  # vLLM's knobs go with --engine vllm only
        assert changed_p != apply(base, Overrides(**vllm)), f"Overrides.{name} changes nothing"
    p = apply(base, Overrides(top_p=0.7, temperature=0.5))
    assert (p.generation.top_p, p.generation.temperature) == (0.7, 0.5)
    assert {s.cli for s in SPELLING.values()} >= {"--top-p", "--frames", "--no-compress", "--no-cache"}
    for s in SPELLING.values():
        assert all(getattr(s, f) is None or isinstance(getattr(s, f), str) for f in FRONT_ENDS)


def test_top_p_is_validated_like_the_profile_field():
    e = spelled(error(top_p=1.5), "cli")
    assert e.message == "--top-p 1.5 is out of range" and "(0, 1]" in e.hint
    assert spelled(error(top_p=0.0), "serve").message == "top_p 0.0 is out of range"


def test_apply_is_the_flag_rule_chat_uses():
    """A budget clears a tau, a tau clears a budget, any compression setting turns compression back on."""
    fixed = apply(Profile(), Overrides(tau=0.8))
    budget = apply(fixed, Overrides(retention=0.1))
    assert (budget.compression.tau, budget.compression.retention) == (None, 0.1)
    back = apply(budget, Overrides(tau=0.7))
    assert (back.compression.tau, back.compression.retention) == (0.7, None)
    off = apply(back, Overrides(no_compress=True))
    assert off.compression.enabled is False and off.compression.tau == 0.7
    assert apply(off, Overrides(tokens=9)).compression.enabled is True
    assert apply(off, Overrides()) == off


def test_profile_file_errors_keep_the_dotted_keys():
    bad = dataclasses.replace(Profile(), sampling=dataclasses.replace(Profile().sampling, n_frames=0))
    with pytest.raises(OptionError) as e:
        validate(bad)
    assert e.value.message == "sampling.n_frames = 0 is out of range"


def test_the_cache_folder_comes_from_the_user_config_not_through_the_environment(tmp_path, monkeypatch):
    from scissor_cli.cache import FeatureCache

    config = tmp_path / "config.yaml"
    config.write_text(f"cache_dir: {tmp_path / 'mine'}\n")
    monkeypatch.setenv("SCISSOR_CONFIG", str(config))
    monkeypatch.delenv("SCISSOR_CACHE_DIR")
    resolve(Overrides())
    assert "SCISSOR_CACHE_DIR" not in os.environ, "resolving settings leaves the environment alone"
    assert FeatureCache().root == tmp_path / "mine", "the config's cache_dir is the cache's folder"
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "env"))
    assert FeatureCache().root == tmp_path / "env", "SCISSOR_CACHE_DIR beats the config file"
