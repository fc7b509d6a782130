"""Multiple-choice prompts and answer scoring (``scissor_cli.choices``): the lmms-eval prompt presets, parsing a
model's choice, the expected letter and exact-match normalization. Pure functions: no model, no video."""

from __future__ import annotations

import pytest

from scissor_cli.choices import (
    MC_INSTRUCTION,
    PROMPT_PRESETS,
    build_prompt,
    expected_letter,
    normalize_text,
    parse_choice,
    prompt_template,
    strip_letter_labels,
)

QUESTION, OPTIONS = "What does the cat do?", ("sleeps", "eats")


def test_multiple_choice_prompt_is_lmms_eval_style():
    prompt = build_prompt("What does the man do?", ("runs", "sits", "jumps"))
    assert prompt == (
        "What does the man do?\nA. runs\nB. sits\nC. jumps\nAnswer with the option's letter from the given choices "
        "directly."
    )
    assert prompt.endswith(MC_INSTRUCTION) and build_prompt("Plain?", None) == "Plain?"
    assert strip_letter_labels(["A. x", "B. y"]) == ("x", "y")
    assert strip_letter_labels(["(A) x", "(B) y"]) == ("x", "y")
    assert strip_letter_labels(["B. x", "A. y"]) == ("B. x", "A. y"), "labels out of order are content"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"), ("B.", "B"), ("(C)", "C"), ("C) jumps", "C"), ("A. runs", "A"), ("A", "A"),
        ("The answer is B.", "B"), ("Answer: (B) sits", "B"), ("Best option: C", "C"), (" b ", "B"), ("c)", "C"),
        ("sits", "B"), ("He sits.", "B"), ("A man jumps over the fence.", "C"), ("I think it is B", "B"),
        ("The man sits and then jumps", None), ("D", None), ("no idea", None), ("", None),
    ],
)  # fmt: skip
def test_parse_choice(text, expected):
    assert parse_choice(text, ("runs", "sits", "jumps")) == expected, text


def test_expected_letter_and_exact_match_normalization():
    options = ("red car", "blue car")
    assert expected_letter("b", options) == "B" and expected_letter("(A)", options) == "A"
    assert expected_letter("Blue car.", options) == "B" and expected_letter("C", options) is None
    assert normalize_text("  The CAT, sat!  ") == normalize_text("the cat sat") == "the cat sat"


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("default", f"What does the cat do?\nA. sleeps\nB. eats\n{MC_INSTRUCTION}"),
        (
            "videomme",
            "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
            "Respond with only the letter (A, B, C, or D) of the correct option.\nWhat does the cat do?\nA. sleeps\n"
            "B. eats\n\nAnswer with the option's letter from the given choices directly.",
        ),
        ("mvbench", "Question:What does the cat do?\nOption:\n(A) sleeps\n(B) eats\nOnly give the best option.\n"),
        (
            "egoschema",
            f"What does the cat do?\nA. sleeps\nB. eats\n{MC_INSTRUCTION}",
        ),
        ("nextqa", "What does the cat do?\nA. sleeps\nB. eats"),
        ("plain", "What does the cat do?"),
    ],
)
def test_prompt_presets_reproduce_lmms_eval_text(preset, expected):
    assert build_prompt(QUESTION, OPTIONS, preset) == expected
    assert build_prompt(QUESTION, None, preset) == QUESTION, "open questions are asked as written"


def test_default_preset_template_is_unchanged():
    """Outputs written before presets existed keep their config hash."""
    assert (
        prompt_template()
        == prompt_template("default")
        == (f"{{question}}\nA. {{option 1}}\nB. {{option 2}}\n{MC_INSTRUCTION}")
    )
    # egoschema's template is the default's (they differ only in stripping the question's surrounding whitespace)
    assert prompt_template("egoschema") == prompt_template()
    assert len({prompt_template(p) for p in PROMPT_PRESETS}) == len(PROMPT_PRESETS) - 1
