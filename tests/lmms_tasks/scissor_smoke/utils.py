"""Hooks of the scissor_smoke task, shaped like lmms-eval's video multiple-choice tasks (videomme, mvbench)."""

from __future__ import annotations

import re

LETTERS = "ABCD"


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    options = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(doc["options"]))
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}\n{options}{kwargs.get('post_prompt', '')}"


def parse_letter(text: str) -> str | None:
    """The first standalone option letter in the answer ("B", "(B)", "B. a dog"), else None."""
    match = re.search(r"\b([A-D])\b", text)
    return match.group(1) if match else None


def process_results(doc, results):
    return {"acc": float(parse_letter(results[0]) == doc["answer"])}
