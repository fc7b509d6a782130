"""The shared flags, declared once (``cli_flags.SHARED``) and given to each command by ``with_overrides``: every
command's --help lists every shared flag it takes, no command lost one it had, and a new one (--top-p) reaches the
model's generate call."""

from __future__ import annotations

import json
import re

import pytest
import typer
from typer.testing import CliRunner

from scissor_cli.cli import app
from scissor_cli.cli_flags import SHARED
from scissor_cli.settings import OVERRIDES, SPELLING

# The shared flags each command had before they were declared once, plus --top-p: a flag that goes missing from a
# command turns this red.
_ALL = ("--profile --model --revision --tau --tau-temporal --epsilon --retention --tokens --no-compress --frames --fps "
        "--start --end --memory-budget --decode-workers --max-new-tokens --temperature --top-p --seed --device --dtype "
        "--offline --no-cache --newline --no-newline").split()  # fmt: skip
FROZEN = {
    "ask": set(_ALL),
    "chat": set(_ALL),
    "batch": set(_ALL),
    "serve": set(_ALL) - {"--decode-workers"},
    "inspect": set(_ALL) - {"--max-new-tokens", "--temperature", "--top-p", "--newline", "--no-newline"},
}


def commands() -> dict[str, typer.models.CommandInfo]:
    return {c.callback.__name__: c for c in app.registered_commands}


def click_params(name: str) -> dict[str, list[str]]:
    """parameter name -> its flags, as click (and so --help) sees them."""
    command = typer.main.get_command(app).commands[name]
    return {p.name: [*p.opts, *getattr(p, "secondary_opts", [])] for p in command.params}


def help_flags(name: str) -> set[str]:
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert result.exit_code == 0, result.output
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", result.output))


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_help_lists_every_shared_flag_the_command_takes(name):
    taken = commands()[name].callback.__wrapped__.overrides  # what with_overrides gave it
    params = click_params(name)
    shown = help_flags(name)
    for field in taken:
        assert field in params, f"{name}: with_overrides took {field} but the command has no such option"
        flags = [f for f in params[field] if f.startswith("--")]
        assert flags and set(flags) <= shown, f"{name} --help lacks {flags}"
    if name in ("inspect", "batch"):  # with_overrides(sweep=True): the comma-list kind of the three
        command = typer.main.get_command(app).commands[name]
        metavars = {p.name: p.metavar for p in command.params if p.name in ("tau", "retention", "tokens")}
        assert all(m.endswith("...]") for m in metavars.values()), metavars
    shared_shown = shown & set(_ALL)
    assert shared_shown == FROZEN[name], (
        f"{name}: missing {sorted(FROZEN[name] - shared_shown)}, new {sorted(shared_shown - FROZEN[name])}"
    )


def test_the_declaration_covers_every_override_and_the_spelling_table_matches():
    assert set(OVERRIDES) <= set(SHARED), "every Overrides field has its flag"
    flags = {f for name in FROZEN for opts in click_params(name).values() for f in opts}
    for key, spelling in SPELLING.items():
        assert spelling.cli in flags, f"SPELLING[{key!r}].cli {spelling.cli} is no flag of any command"


def test_no_command_collects_its_flags_from_locals():
    from pathlib import Path

    import scissor_cli.cli as cli

    assert "locals()" not in Path(cli.__file__).read_text()


def test_top_p_reaches_generation(tiny_hf_dir, tmp_path, monkeypatch):
    """--top-p is in the answer's profile and in the GenerationConfig the model samples with."""
    import transformers
    from media import pattern_clip

    seen = []

    class Recording(transformers.GenerationConfig):
        def __init__(self, **kwargs):
            seen.append(kwargs.get("top_p"))
            super().__init__(**kwargs)

    monkeypatch.setattr(transformers, "GenerationConfig", Recording)
    clip = pattern_clip(tmp_path / "clip.mp4")
    args = ["ask", clip, "Q?", "--model", str(tiny_hf_dir), "--frames", "2", "--max-new-tokens", "2", "--json"]
    result = CliRunner().invoke(app, [*args, "--temperature", "0.7", "--seed", "1", "--top-p", "0.35"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["profile"]["generation"]["top_p"] == 0.35
    assert seen == [0.35], f"generate sampled with top_p {seen}"
    bad = CliRunner().invoke(app, [*args, "--top-p", "1.5"])
    assert bad.exit_code == 2 and "--top-p 1.5 is out of range" in bad.stderr, bad.output


@pytest.mark.parametrize("name", ["ask", "chat"])
def test_a_bad_flag_value_is_named_as_the_flag(name):
    """README's example, word for word: the CLI spells the setting as the flag the user typed."""
    args = [name, "clip.mp4", *(["Q?"] if name == "ask" else []), "--frames", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines[:2] == ["error: --frames 0 is out of range", "hint: --frames must be an integer from 1 to 4096"]
