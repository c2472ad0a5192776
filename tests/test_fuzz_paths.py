"""Property: however the input and the output of `answer --input` are spelled, the input's bytes never change.

Random spellings of paths in one directory: `.` and `//` segments, `..` through directories that exist, that do not
exist yet and that are symbolic links, a symbolic link to the directory itself, and file names that are the input,
a hard link to it, a symbolic link (or a chain of two) to it, or another file: new, a dangling link, another question
file, spanqa's own answers to the input. The output must be refused exactly when it is the input's file (or a file
spanqa did not write), and the input's bytes stay the same whatever happens.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from fuzzing import BUDGETS, fuzz
from hypothesis import strategies as st

from spanqa.batch_answer import answer_file
from spanqa.errors import DataError

QUESTIONS = "".join(json.dumps({"id": f"q{i}", "question": f"who wrote book {i}?",
                                "context": f"Book {i} was written by Author{i}."}) + "\n" for i in range(3))
EXISTING_STEPS = [".", "", "sub/..", "lsub/..", "lroot", "sub/deeper/../..", "lsub/deeper/../.."]
DIR_STEPS = EXISTING_STEPS + ["missing/..", "new/er/../.."]  # an output may go through directories not made yet
SAME = ["in.jsonl", "hard.jsonl", "soft.jsonl", "soft2.jsonl"]  # the input's file under four names
OTHER = ["new.jsonl", "dangling.jsonl", "other.jsonl", "answers.jsonl"]


def make_dir(root: Path, answers: bytes, log: bytes) -> None:
    (root / "in.jsonl").write_text(QUESTIONS)
    os.link(root / "in.jsonl", root / "hard.jsonl")
    (root / "soft.jsonl").symlink_to("in.jsonl")
    (root / "soft2.jsonl").symlink_to(root / "soft.jsonl")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "lsub").symlink_to(root / "sub")
    (root / "lroot").symlink_to(root)
    (root / "dangling.jsonl").symlink_to(root / "nowhere.jsonl")
    (root / "other.jsonl").write_text(QUESTIONS.replace("who", "when"))
    (root / "answers.jsonl").write_bytes(answers)
    (root / "answers.jsonl.spanqa").write_bytes(log)


def spell(root: Path, steps: list[str], name: str) -> str:
    return "/".join([str(root), *steps, name])


@pytest.mark.parametrize("budget", BUDGETS)
def test_random_spellings_never_change_the_input(tiny_reader, tmp_path, budget):
    (tmp_path / "in.jsonl").write_text(QUESTIONS)
    answer_file(tiny_reader, tmp_path / "in.jsonl", tmp_path / "answers.jsonl", progress=False)
    answers = (tmp_path / "answers.jsonl").read_bytes()
    log = (tmp_path / "answers.jsonl.spanqa").read_bytes()  # spanqa's fingerprints of those answers
    outcomes = {"refused": 0, "answered": 0}

    def prop(in_steps, in_name, out_steps, out_name, chunk):
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            make_dir(root, answers, log)
            inp, out = spell(root, in_steps, in_name), spell(root, out_steps, out_name)
            try:
                answer_file(tiny_reader, inp, out, chunk=chunk, progress=False)
                refused = False
            except DataError as e:
                refused = True
                assert "\n" not in str(e)
            assert (root / "in.jsonl").read_text() == QUESTIONS
            assert (root / "other.jsonl").read_text() == QUESTIONS.replace("who", "when")
            # refused exactly when the output is the input's file, or a question file spanqa did not write
            assert refused == (out_name in SAME or out_name == "other.jsonl"), (inp, out)
            if not refused:
                assert [json.loads(x)["id"] for x in Path(out).read_text().splitlines()] == ["q0", "q1", "q2"]
            outcomes["refused" if refused else "answered"] += 1

    fuzz("answer --input/--output path spellings", budget, prop,
         in_steps=st.lists(st.sampled_from(EXISTING_STEPS), max_size=4), in_name=st.sampled_from(SAME),
         out_steps=st.lists(st.sampled_from(DIR_STEPS), max_size=4), out_name=st.sampled_from(SAME + OTHER),
         chunk=st.sampled_from([1, 2, 512]))
    assert outcomes["refused"] > 0 and outcomes["answered"] > 0


def test_the_spellings_reach_the_files_they_claim(tmp_path):
    """The fixture itself: every existing step keeps the directory; the SAME names are the input's inode, the
    OTHER names are not."""
    make_dir(tmp_path, b"", b"")
    for step in EXISTING_STEPS:
        assert os.path.samefile(spell(tmp_path, [step], "in.jsonl"), tmp_path / "in.jsonl"), step
    for name in SAME:
        assert os.path.samefile(tmp_path / name, tmp_path / "in.jsonl")
    for name in OTHER:
        assert not os.path.exists(tmp_path / name) or not os.path.samefile(tmp_path / name, tmp_path / "in.jsonl")
