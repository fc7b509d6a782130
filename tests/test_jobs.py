"""Batch jobs from paths and manifests (``scissor_cli.jobs``): discovery, ids, the manifest formats and their
errors. No model, no video decoding, no subprocess: the files are placeholders (only their names are read)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scissor_cli.errors import ManifestError
from scissor_cli.jobs import jobs_from_manifest, jobs_from_paths


@pytest.fixture
def folder(tmp_path) -> Path:
    """Placeholder videos a.mp4, b.mp4, bad.mp4, sub/c.mp4, sub/d.mp4 plus a hidden video and a text file."""
    d = tmp_path / "videos"
    for rel in ("a.mp4", "b.mp4", "bad.mp4", "sub/c.mp4", "sub/d.mp4"):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(b"placeholder")
    (d / ".hidden.mp4").write_bytes(b"not scanned")
    (d / "notes.txt").write_text("not a video")
    return d


def test_jobs_from_paths_recursive_sorted_filtered(folder):
    jobs = jobs_from_paths([str(folder)], "What happens?")
    rel = [os.path.relpath(j.video, folder) for j in jobs]
    assert rel == ["a.mp4", "b.mp4", "bad.mp4", "sub/c.mp4", "sub/d.mp4"], "recursive, sorted, hidden/.txt skipped"
    assert len({j.id for j in jobs}) == 5 and all(j.id.startswith(j.video + "#") for j in jobs)
    other = jobs_from_paths([str(folder)], "Another question?")
    assert {j.id for j in jobs}.isdisjoint(j.id for j in other), "ids include the question"
    assert [j.id for j in jobs] == [j.id for j in jobs_from_paths([str(folder)], "What happens?")], "deterministic"

    only_sub = jobs_from_paths([str(folder)], "Q?", glob="sub/*")
    assert [os.path.basename(j.video) for j in only_sub] == ["c.mp4", "d.mp4"]
    assert [os.path.basename(j.video) for j in jobs_from_paths([str(folder)], "Q?", glob="[ab].mp4")] == [
        "a.mp4",
        "b.mp4",
    ]
    # a file named explicitly is taken whatever its extension; duplicates collapse
    both = jobs_from_paths([str(folder / "notes.txt"), str(folder / "a.mp4"), str(folder)], "Q?")
    assert len(both) == 6 and sum(j.video.endswith("a.mp4") for j in both) == 1

    with pytest.raises(ManifestError, match="no such file"):
        jobs_from_paths([str(folder / "missing")], "Q?")
    with pytest.raises(ManifestError, match="no videos found") as e:
        jobs_from_paths([str(folder)], "Q?", glob="*.nothing")
    assert "--glob" in e.value.hint


def test_manifest_jsonl_and_csv(folder, tmp_path):
    man = folder / "jobs.jsonl"
    rows = [
        {"video": "a.mp4", "question": "What is shown?", "id": "one", "task": "count"},
        {"video": "sub/c.mp4", "question": "Which color?", "options": ["red", "green"], "answer": "green"},
        {"video": str(folder / "b.mp4"), "question": "Which?", "options": "A. x|B. y|C. z", "answer": "(c)"},
        {"video": "a.mp4", "question": "How many?", "answer": 3},
    ]
    man.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    jobs = jobs_from_manifest(str(man))
    assert [j.video for j in jobs] == [str(folder / p) for p in ("a.mp4", "sub/c.mp4", "b.mp4", "a.mp4")]
    assert jobs[0].id == "one" and jobs[0].extra == {"task": "count"} and jobs[0].options is None
    assert jobs[1].options == ("red", "green") and jobs[1].answer == "green" and jobs[1].id.startswith("sub/c.mp4#")
    assert jobs[2].options == ("x", "y", "z"), "letter labels in the data are stripped"
    assert jobs[3].answer == "3"

    csv_path = tmp_path / "jobs.csv"
    csv_path.write_text(
        "\ufeffvideo,question,options,answer,category\n"
        f'{folder / "a.mp4"},"Is it, really?","[""yes"", ""no""]",A,yn\n'
        f"{folder / 'b.mp4'},Which animal?,cat|dog|bird,dog,\n",
        encoding="utf-8",
    )
    jobs = jobs_from_manifest(str(csv_path))
    assert (
        jobs[0].question == "Is it, really?"
        and jobs[0].options == ("yes", "no")
        and jobs[0].extra == {"category": "yn"}
    )
    assert jobs[1].options == ("cat", "dog", "bird") and jobs[1].answer == "dog" and jobs[1].extra == {}


@pytest.mark.parametrize(
    ("suffix", "text", "line", "words"),
    [
        (".jsonl", '{"video": "a.mp4", "question": "q"}\n{"video": "b.mp4", "question": \n', 2, "not valid JSON"),
        (".jsonl", '{"video": "a.mp4", "question": "q"}\n\n{"question": "q"}\n', 3, "missing 'video'"),
        (".jsonl", '{"video": "a.mp4"}\n', 1, "missing 'question'"),
        (".jsonl", '{"video": "a.mp4", "question": "q", "id": 1}\n{"video": "b.mp4", "question": "r", "id": "1"}\n',
         2, "duplicate id '1' (first on line 1)"),
        (".jsonl", '{"video": "a.mp4", "question": "q"}\n{"video": "a.mp4", "question": "q"}\n', 2, "duplicate id"),
        (".jsonl", '{"video": "a.mp4", "question": "q", "options": ["x", "y"], "answer": "C"}\n', 1,
         "neither an option letter"),
        (".jsonl", '{"video": "a.mp4", "question": "q", "options": ["x"]}\n', 1, "1 options"),
        (".jsonl", '{"video": "a.mp4", "question": "q", "status": "ok"}\n', 1, "reserved"),
        (".jsonl", '["a.mp4", "q"]\n', 1, "expected a JSON object"),
        (".csv", "video,question\na.mp4,q\nb.mp4,\n", 3, "missing 'question'"),
        (".csv", "path,question\na.mp4,q\n", 1, "no 'video' column"),
        (".csv", "video,question\na.mp4,q,extra\n", 2, "more cells"),
        (".csv", 'video,question,options\na.mp4,q,"[""x"", "\n', 2, "not a valid JSON list"),
    ],
)  # fmt: skip
def test_malformed_manifest_names_file_and_line(tmp_path, suffix, text, line, words):
    path = tmp_path / f"jobs{suffix}"
    path.write_text(text)
    with pytest.raises(ManifestError) as e:
        jobs_from_manifest(str(path))
    assert str(path) in e.value.message and f"line {line}" in e.value.message, e.value.message
    assert words in e.value.message and e.value.hint, (e.value.message, e.value.hint)


def test_manifest_file_errors(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        jobs_from_manifest(str(tmp_path / "nope.jsonl"))
    (tmp_path / "jobs.txt").write_text("x")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        jobs_from_manifest(str(tmp_path / "jobs.txt"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ManifestError, match="no jobs"):
        jobs_from_manifest(str(tmp_path / "empty.jsonl"))


def test_manifest_json_array_and_tsv_read_like_jsonl(folder, tmp_path):
    rows = [
        {"video": "a.mp4", "question": "What is shown?", "id": "one", "task": "count"},
        {"video": "sub/c.mp4", "question": "Which color?", "options": ["red", "green"], "answer": "green"},
    ]
    (folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "m.json").write_text(json.dumps(rows, indent=2))
    (folder / "m.tsv").write_text(
        "id\tvideo\tquestion\toptions\tanswer\ttask\n"
        "one\ta.mp4\tWhat is shown?\t\t\tcount\n"
        "\tsub/c.mp4\tWhich color?\tred|green\tgreen\t\n"
    )
    expected = jobs_from_manifest(str(folder / "m.jsonl"))
    assert jobs_from_manifest(str(folder / "m.json")) == expected
    assert jobs_from_manifest(str(folder / "m.tsv")) == expected

    (tmp_path / "obj.json").write_text('{"video": "a.mp4", "question": "q"}')
    with pytest.raises(ManifestError, match="expected a JSON array"):
        jobs_from_manifest(str(tmp_path / "obj.json"))
    (tmp_path / "bad.json").write_text('[{"video": "a.mp4", "question": "q"},\n {"question": "q"}]')
    with pytest.raises(ManifestError, match=r"bad\.json item 2: missing 'video'"):
        jobs_from_manifest(str(tmp_path / "bad.json"))
    (tmp_path / "broken.json").write_text('[{"video": "a.mp4",\n "question": }]')
    with pytest.raises(ManifestError, match=r"broken\.json line 2: not valid JSON"):
        jobs_from_manifest(str(tmp_path / "broken.json"))
