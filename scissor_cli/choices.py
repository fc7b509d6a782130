"""Multiple choice: the option letters, the prompt presets (``build_prompt``, ``prompt_template``), the expected
letter of an answer and the letter parsed from the model's reply. Standard library only.

    prompt = build_prompt("What does the cat do?", ("sleeps", "eats"))   # the default template
    prompt = build_prompt("What does the cat do?", ("sleeps", "eats"), "mvbench")   # lmms-eval's MVBench template
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence

LETTERS = string.ascii_uppercase
# lmms-eval's post prompt for LLaVA-OneVision multiple-choice video benchmarks (Video-MME, NExT-QA, ...)
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
# Multiple-choice prompt presets. The four benchmark presets reproduce the text lmms-eval 0.7.2 builds for each
# task with its default model arguments (doc_to_text + the task YAML's pre/post prompt), so accuracies are
# comparable with numbers published from lmms-eval runs.
DEFAULT_PRESET = "default"
PROMPT_PRESETS = ("default", "videomme", "mvbench", "egoschema", "nextqa", "plain")
# Video-MME's fixed instruction line (lmms-eval keeps "(A, B, C, or D)" whatever the number of options)
VIDEOMME_INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
MVBENCH_POST = "Only give the best option.\n"  # every MVBench sub-task's post_prompt


def _lettered(options: Sequence[str], style: str = "{letter}. {option}") -> list[str]:
    return [style.format(letter=LETTERS[i], option=o) for i, o in enumerate(options)]


def build_prompt(question: str, options: Sequence[str] | None, preset: str | None = None) -> str:
    """The question as the model sees it. Without options: the question as written, whatever the preset. With
    options, by ``preset`` (None: ``default``):

    * ``default``: question, "A. x" lines, then lmms-eval's "Answer with the option's letter ..." line
      (the template LLaVA-OneVision's video evaluations use; identical to ``egoschema`` up to the question's
      surrounding whitespace);
    * ``videomme``: Video-MME's instruction line, the question, the "A. x" lines, a blank line, the letter line;
    * ``mvbench``: "Question:<question>", "Option:", "(A) x" lines, "Only give the best option." and a newline;
    * ``egoschema``: the question, the "A. x" lines, the letter line;
    * ``nextqa``: the stripped question and stripped "A. x" lines, no instruction (NExT-QA's MC task has none);
    * ``plain``: the question exactly as written (options are used for scoring only: for data whose question
      already lists its options)."""
    preset = DEFAULT_PRESET if preset is None else preset
    if preset not in PROMPT_PRESETS:
        raise ValueError(f"unknown prompt preset {preset!r}")  # callers validate; this is a bug
    if not options or preset == "plain":
        return question
    if preset == "videomme":
        return "\n".join([VIDEOMME_INSTRUCTION, question, *_lettered(options), "", MC_INSTRUCTION])
    if preset == "mvbench":
        return (
            "Question:"
            + question
            + "\nOption:\n"
            + "".join(f"({LETTERS[i]}) {o}\n" for i, o in enumerate(options))
            + MVBENCH_POST
        )
    if preset == "egoschema":
        return "\n".join([question, *_lettered(options), MC_INSTRUCTION])
    if preset == "nextqa":
        return "\n".join([question.strip(), *_lettered([o.strip() for o in options])])
    return "\n".join([question.strip(), *_lettered(options), MC_INSTRUCTION])


def prompt_template(preset: str | None = None) -> str:
    """The multiple-choice prompt's shape, derived from ``build_prompt``; part of a batch run's ``config``, so
    changing the template makes old records another configuration."""
    return build_prompt("{question}", ("{option 1}", "{option 2}"), preset)


def normalize_text(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: "The cat." == "the  cat"."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in text)
    return " ".join(text.split())


def expected_letter(answer: str, options: Sequence[str]) -> str | None:
    """The expected option's letter from a letter ("B", "(B)", "b.") or from the option's text."""
    letter = re.fullmatch(r"\s*\(?([A-Za-z])[.):]?\s*", answer)
    if letter and letter.group(1).upper() in LETTERS[: len(options)]:
        return letter.group(1).upper()
    target = normalize_text(answer)
    for i, option in enumerate(options):
        if normalize_text(option) == target:
            return LETTERS[i]
    return None


_ANSWER_PREFIX = re.compile(
    r"^\s*(?:the\s+)?(?:best\s+|correct\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:：]?\s*", re.I
)


def parse_choice(text: str, options: Sequence[str]) -> str | None:
    """The predicted letter: a lone letter ("b", "(C)"); a leading "B" / "(B)" / "B." (after an "The answer is"
    prefix); the answer equal to (or containing exactly one) option's text; else the first standalone valid capital
    letter that is not the article "A" ("A man walks ..."). None when nothing matches."""
    valid = LETTERS[: len(options)]
    stripped = _ANSWER_PREFIX.sub("", text.strip())
    alone = re.fullmatch(r"\(?([A-Za-z])[.):]?", stripped)  # a lone letter, any case: "b", "(c)", "D."
    if alone:
        return alone.group(1).upper() if alone.group(1).upper() in valid else None
    lead = re.match(r"^\(?([A-Z])\)?(?:[.):,]|\s*$|\s+[-–]|\s+\S)", stripped)
    if lead and lead.group(1) in valid:
        rest = stripped[lead.end(1) :]
        # "A man ..." is an article, not a choice; "A. man" / "(A) man" / "A" alone are choices
        if not (lead.group(1) in ("A", "I") and re.match(r"^\s+[a-z]", rest) and not stripped.startswith("(")):
            return lead.group(1)
    norm = normalize_text(stripped)
    texts = [normalize_text(o) for o in options]
    for i, option in enumerate(texts):
        if option and norm == option:
            return valid[i]
    contained = [i for i, option in enumerate(texts) if option and re.search(rf"\b{re.escape(option)}\b", norm)]
    if len(contained) == 1:
        return valid[contained[0]]
    for m in re.finditer(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", stripped):
        if m.group(1) in valid and not (m.group(1) in ("A", "I") and re.match(r"\s+[a-z]", stripped[m.end() :])):
            return m.group(1)
    return None


def strip_letter_labels(options: Sequence[str]) -> tuple[str, ...]:
    """Drop "A. " / "(A) " / "A) " prefixes when every option carries its own letter (Video-MME style data)."""
    pattern = re.compile(r"^\(?([A-Z])[.):]\s*(.*)$", re.S)
    matches = [pattern.match(o) for o in options]
    if all(m and m.group(1) == LETTERS[i] and m.group(2).strip() for i, m in enumerate(matches)):
        return tuple(m.group(2).strip() for m in matches)
    return tuple(options)
