"""Profiles and options: strict YAML, precedence, validation, and the FLOPs model. Pure Python, no model."""

from __future__ import annotations

import pytest

from scissor_cli.errors import OptionError, ProfileError
from scissor_cli.options import Profile, validate
from scissor_cli.pipeline import llm_tflops
from scissor_cli.profiles import find_profile, list_profiles, load_profile, profile_yaml
from scissor_cli.settings import Overrides, resolve, spelled

BUILTIN = ("default", "r50", "r35", "r10", "r5", "fast", "off")


@pytest.fixture(autouse=True)
def no_user_profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("SCISSOR_PROFILES_DIR", str(tmp_path / "user-profiles"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # no user config unless a test writes one
    monkeypatch.delenv("SCISSOR_CONFIG", raising=False)
    monkeypatch.delenv("SCISSOR_MODEL", raising=False)


def from_flags(profile, **flags):
    """The profile the CLI resolves from ``--profile`` and these flags; errors in the flags' words."""
    try:
        return resolve(Overrides(profile=profile, **flags))
    except OptionError as e:
        raise spelled(e, "cli") from e


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_every_builtin_profile_loads_with_its_documented_values():
    names = {e.name for e in list_profiles()}
    assert set(BUILTIN) <= names, f"missing built-in profiles: {set(BUILTIN) - names}"
    p = {n: load_profile(n) for n in BUILTIN}
    assert p["default"].sampling.n_frames == 32 and p["default"].compression.enabled
    assert p["default"].compression.tau is None, "default leaves tau to the checkpoint (else the paper's 0.9)"
    for n, r in (("r50", 0.5), ("r35", 0.35), ("r10", 0.1), ("r5", 0.05)):
        assert p[n].compression.retention == pytest.approx(r), n
    assert p["fast"].sampling.n_frames == 8 and p["fast"].compression.retention == pytest.approx(0.1)
    assert p["off"].compression.enabled is False
    assert all(p[n].description for n in BUILTIN), "every built-in profile explains itself"


def test_unknown_top_level_key_names_file_key_and_allowed(tmp_path):
    path = write(tmp_path, "compresion:\n  tau: 0.8\n")
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    assert path in e.value.message and "compresion" in e.value.message
    assert "compression" in e.value.hint and "sampling" in e.value.hint


def test_unknown_nested_key_names_dotted_key_and_allowed(tmp_path):
    path = write(tmp_path, "compression:\n  tua: 0.8\n")
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    assert "compression.tua" in e.value.message and path in e.value.message
    assert "tau" in e.value.hint and "epsilon" in e.value.hint


@pytest.mark.parametrize(
    "text, key",
    [
        ("compression:\n  tau: 2.5\n", "compression.tau"),
        ("compression:\n  tau: high\n", "compression.tau"),
        ("compression:\n  retention: 0\n", "compression.retention"),
        ("compression:\n  retention: 0.1\n  tokens: 100\n", "compression.retention"),
        ("sampling:\n  n_frames: 8.5\n", "sampling.n_frames"),
        ("sampling:\n  n_frames: auto\n", "sampling.n_frames"),
        ("sampling:\n  start: 5\n  end: 2\n", "sampling.end"),
        ("generation:\n  temperature: -1\n", "generation.temperature"),
        ("model:\n  dtype: float8\n", "model.dtype"),
        ("model:\n  offline: maybe\n", "model.offline"),
        ("compression: 0.9\n", "compression"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    assert key in e.value.message, f"{e.value.message!r} should name {key}"
    assert path in e.value.message and e.value.hint


def test_invalid_yaml_reports_the_line(tmp_path):
    path = write(tmp_path, "compression:\n  tau: 0.8\n   epsilon: [\n")
    with pytest.raises(ProfileError, match="not valid YAML at line"):
        load_profile(path)


def test_not_a_mapping_and_empty_file(tmp_path):
    with pytest.raises(ProfileError, match="must be a mapping"):
        load_profile(write(tmp_path, "- a\n- b\n"))
    assert load_profile(write(tmp_path, "", "empty.yaml")) == Profile(name="empty")


def test_missing_profile_lists_the_available_ones(tmp_path):
    with pytest.raises(ProfileError) as e:
        load_profile("nope")
    assert "nope" in e.value.message and "r10" in e.value.hint
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(str(tmp_path / "missing.yaml"))


def test_auto_values_and_user_folder_shadowing(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "r10.yaml").write_text("description: my r10\ncompression:\n  tokens: 300\n  tau: auto\n")
    monkeypatch.setenv("SCISSOR_PROFILES_DIR", str(folder))
    p = load_profile("r10")
    assert p.description == "my r10" and p.compression.tokens == 300 and p.compression.retention is None
    assert find_profile("r10") == folder / "r10.yaml"
    assert [e.source for e in list_profiles() if e.name == "r10"] == ["user"]


def test_precedence_defaults_then_profile_then_flags(tmp_path):
    path = write(tmp_path, "sampling:\n  n_frames: 12\ncompression:\n  tau: 0.8\n  epsilon: 0.1\n")
    p = from_flags(path, epsilon=0.2, frames=None)
    assert p.sampling.n_frames == 12, "profile beats built-in default"
    assert p.compression.epsilon == 0.2, "flag beats profile"
    assert p.compression.tau == 0.8 and p.generation.max_new_tokens == Profile().generation.max_new_tokens


def test_budget_flags_replace_the_profiles_budget():
    assert from_flags("r10", tokens=500).compression.budget == 500
    assert from_flags("r10", retention=0.35).compression.budget == pytest.approx(0.35)
    explicit = from_flags("r10", tau=0.85)
    assert explicit.compression.budget is None and explicit.compression.tau == 0.85, "--tau means this threshold"
    assert from_flags("off", no_compress=True).compression.enabled is False
    with pytest.raises(OptionError):
        from_flags(None, retention=0.1, tokens=10)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(tau=1.5),
        dict(epsilon=0.0),
        dict(retention=1.5),
        dict(tokens=0),
        dict(frames=0),
        dict(fps=-1.0),
        dict(start=3.0, end=1.0),
        dict(max_new_tokens=0),
        dict(temperature=-0.1),
        dict(device="tpu"),
        dict(dtype="fp8"),
    ],
)
def test_flag_values_are_validated(kwargs):
    with pytest.raises(OptionError) as e:
        from_flags(None, **kwargs)
    assert e.value.hint, "every range error says what is allowed"


def test_validate_accepts_the_defaults():
    assert validate(Profile()) == Profile()


def test_flops_model_matches_the_paper():
    # the paper's FLOPs model: 7B (28 layers, d 3584, FFN 18944) at 6,272 tokens -> 41.4 TFLOPs (R = 100)
    assert llm_tflops(28, 6272, 3584, 18944, n_generated=100) == pytest.approx(41.4, abs=0.05)
    assert llm_tflops(28, 627, 3584, 18944, n_generated=100) == pytest.approx(3.9, abs=0.1)
    assert llm_tflops(28, 6272, 3584, 18944) < llm_tflops(28, 6272, 3584, 18944, n_generated=1)


def test_a_directory_is_not_a_profile(tmp_path):
    with pytest.raises(ProfileError, match="is a directory"):
        load_profile(str(tmp_path))


# ---------------------------------------------------------------------------------------------------- names vs paths
def test_a_file_in_the_working_directory_does_not_hijack_a_profile_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r10").write_text("compression:\n  tokens: 3\n")
    assert find_profile("r10").parent.name == "profiles", "a bare name is a built-in/user profile"
    assert load_profile("r10").compression.retention == pytest.approx(0.1)
    assert load_profile("./r10").compression.tokens == 3, "a path that looks like one is the file"
    (tmp_path / "mine").write_text("sampling:\n  n_frames: 3\n")
    with pytest.raises(ProfileError) as e:
        load_profile("mine")
    assert "unknown profile 'mine'" in e.value.message and "--profile ./mine" in e.value.hint


def test_an_unknown_name_suggests_the_closest():
    with pytest.raises(ProfileError) as e:
        load_profile("r1O")
    assert "did you mean r10?" in e.value.message
    with pytest.raises(ProfileError) as e:
        load_profile("zzzzzz")
    assert "did you mean" not in e.value.message, "no suggestion when nothing is close"


@pytest.mark.parametrize("name", BUILTIN)
def test_profile_yaml_round_trips(tmp_path, name):
    p = load_profile(name)
    text = profile_yaml(p, "test")
    path = tmp_path / f"{name}-copy.yaml"
    path.write_text(text)
    back = load_profile(str(path))
    assert back.to_dict() | {"name": name} == p.to_dict(), f"profiles show {name} does not load back unchanged"


def test_profile_yaml_of_every_value_kind_round_trips(tmp_path):
    path = write(
        tmp_path,
        "description: \"a: colon, #hash and 'quotes'\"\nsampling:\n  fps: 2\n  start: 1.5\n  end: 9\n"
        "compression:\n  tau: 0.8\n  tau_temporal: 0.7\n  epsilon: 0.1\n  seed: 3\n"
        "generation:\n  temperature: 0.7\n  top_p: 0.9\nmodel:\n  model: ./ckpt\n  revision: v1.0\n  newline: false\n"
        "  dtype: bf16\n",
    )
    p = load_profile(path)
    assert p.model.dtype == "bfloat16", "profiles accept the dtype aliases too"
    copy = tmp_path / "copy.yaml"
    copy.write_text(profile_yaml(p, path))
    assert load_profile(str(copy)).to_dict() | {"name": "p"} == p.to_dict()


# ---------------------------------------------------------------------------------------------------- tau and budget
def test_tau_and_a_budget_one_rule():
    for budget in (dict(retention=0.1), dict(tokens=50)):
        with pytest.raises(OptionError) as e:
            from_flags(None, tau=0.8, **budget)
        assert "--tau" in e.value.message and "budget searches tau" in e.value.message
    assert from_flags("r10", tau=0.85).compression.budget is None, "--tau clears a profile's budget"
    tau_profile = from_flags(None, tau=0.8)  # stands in for a profile that fixes tau
    assert tau_profile.compression.tau == 0.8


def test_a_budget_flag_clears_a_profiles_tau(tmp_path):
    path = write(tmp_path, "compression:\n  tau: 0.8\n  tau_temporal: 0.7\n")
    p = from_flags(path, retention=0.2)
    assert p.compression.tau is None and p.compression.retention == pytest.approx(0.2)
    assert p.compression.tau_temporal == pytest.approx(0.7), "a fixed temporal tau may go with a budget"


def test_a_profile_file_with_tau_and_a_budget_is_a_profile_error(tmp_path):
    with pytest.raises(ProfileError) as e:
        load_profile(write(tmp_path, "compression:\n  tau: 0.8\n  retention: 0.1\n"))
    assert "budget searches tau itself" in e.value.message and "compression.tau" in e.value.message


# ---------------------------------------------------------------------------------------------------- flag names
@pytest.mark.parametrize(
    "kwargs, flag, allowed",
    [
        (dict(frames=0), "--frames", "1 to 4096"),
        (dict(device="tpu"), "--device", "auto, cpu, cuda, cuda:N or mps"),
        (dict(dtype="fp8"), "--dtype", "float32"),
        (dict(tau_temporal=3.0), "--tau-temporal", "-1 to 1"),
        (dict(max_new_tokens=0), "--max-new-tokens", "1 to 32768"),
        (dict(start=3.0, end=1.0), "--end", "--start"),
    ],
)
def test_flag_errors_name_the_flag_and_the_allowed_values(kwargs, flag, allowed):
    with pytest.raises(OptionError) as e:
        from_flags(None, **kwargs)
    text = f"{e.value.message}\n{e.value.hint}"
    assert flag in e.value.message and allowed in e.value.hint, text
    assert "sampling." not in text and "model." not in text and "generation." not in text, text


def test_dtype_aliases():
    assert [from_flags(None, dtype=d).model.dtype for d in ("bf16", "fp16", "fp32", "BF16")] == [
        "bfloat16",
        "float16",
        "float32",
        "bfloat16",
    ]


# ---------------------------------------------------------------------------------------------------- user config
def test_user_config_precedence(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text("model: from/config\ndevice: cpu\ndtype: fp32\n")
    monkeypatch.setenv("SCISSOR_CONFIG", str(config))
    p = from_flags(None)
    assert (p.model.model, p.model.device, p.model.dtype) == ("from/config", "cpu", "float32")
    monkeypatch.setenv("SCISSOR_MODEL", "from/env")
    assert from_flags(None).model.model == "from/env", "SCISSOR_MODEL beats the config file"
    named = write(tmp_path, "model:\n  model: from/profile\n")
    assert from_flags(named).model.model == "from/profile", "a profile that names a model beats both"
    assert from_flags(named).model.device == "cpu", "keys the profile leaves unset still come from the config"
    assert from_flags(named, model="from/flag").model.model == "from/flag", "flags beat everything"


@pytest.mark.parametrize(
    "text, words",
    [
        ("modle: x\n", ["unknown key 'modle'", "model, device, dtype, cache_dir"]),
        ("device: tpu\n", ["device", "auto, cpu"]),
        ("dtype: 8\n", ["dtype"]),
        ("- a\n", ["must be a mapping"]),
    ],
)
def test_user_config_is_loaded_strictly(tmp_path, monkeypatch, text, words):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    monkeypatch.setenv("SCISSOR_CONFIG", str(config))
    with pytest.raises(ProfileError) as e:
        from_flags(None)
    text = f"{e.value.message}\n{e.value.hint}"
    assert str(config) in e.value.message and all(w in text for w in words), text


def test_user_config_location(tmp_path, monkeypatch):
    from scissor_cli.config import config_path, load_config

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config_path() == (tmp_path / "scissor" / "config.yaml", False)
    assert load_config().path is None, "no file, no config"
    monkeypatch.setenv("SCISSOR_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ProfileError, match="does not exist"):
        load_config()
