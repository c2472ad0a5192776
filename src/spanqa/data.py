"""Load and validate question-answering data.

Formats: SQuAD v1.1/v2.0 JSON (plain or .gz) and JSONL in the Hugging Face datasets layout
(`{"id","question","context","answers":{"text":[...],"answer_start":[...]}}`, plain or .gz).
Every problem is reported with the file, the record id and the field, or, with `skip_invalid=True`,
counted and skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spanqa.errors import DataError
from spanqa.validation import Invalid, check_int, check_text, is_unicode, json_error, open_text

__all__ = ["Dataset", "Example", "GoldAnswer", "is_unicode", "load_dataset"]


@dataclass(frozen=True)
class GoldAnswer:
    text: str
    start: int  # character offset in the context

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    context: str
    answers: tuple[GoldAnswer, ...] = ()
    is_impossible: bool = False


@dataclass
class Dataset:
    examples: list[Example]
    path: str = ""
    version: str = "v1.1"  # "v2.0" when any question is unanswerable
    skipped: Counter = field(default_factory=Counter)  # reason -> count (with skip_invalid)

    @property
    def has_unanswerable(self) -> bool:
        return any(e.is_impossible for e in self.examples)


def _make_answers(context: str, texts: list, starts: list, field_prefix: str) -> tuple[GoldAnswer, ...]:
    if len(texts) != len(starts):
        raise Invalid(field_prefix, f"has {len(texts)} texts but {len(starts)} answer_start values")
    answers = []
    for k, (t, s) in enumerate(zip(texts, starts, strict=True)):
        text = check_text(t, f"{field_prefix}[{k}].text")
        start = check_int(s, f"{field_prefix}[{k}].answer_start")
        if start < 0 or context[start : start + len(text)] != text:
            found = context[max(start, 0) : max(start, 0) + len(text)]
            raise Invalid(
                f"{field_prefix}[{k}].answer_start",
                f"= {start} does not point at the answer text {text!r} (the context there reads {found!r})",
            )
        answers.append(GoldAnswer(text, start))
    return tuple(answers)


def _example(qid: Any, question: Any, context: str, answers: tuple, impossible: bool) -> Example:
    return Example(id=qid, question=question, context=context, answers=answers, is_impossible=impossible)


def _is_jsonl(path: Path, text: str) -> bool:
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        return True
    if name.endswith(".json"):
        return False
    # Unknown suffix: SQuAD JSON is one object holding "data"; JSONL is one object per line.
    first = text.lstrip()[:1]
    return first == "{" and "\n{" in text.strip() and '"data"' not in text[:200]


class _Collector:
    """Collects examples; raises on the first invalid record unless skipping."""

    def __init__(self, path: Path, skip_invalid: bool):
        self.path, self.skip_invalid = path, skip_invalid
        self.examples: list[Example] = []
        self.skipped: Counter = Counter()
        self.seen_ids: set[str] = set()

    def fail(self, where: str, field_name: str, reason: str) -> None:
        if self.skip_invalid:
            self.skipped[f"{field_name} {reason.split(' (')[0]}" if len(reason) < 60 else field_name] += 1
            return
        raise DataError(
            f"{self.path}: {where}: field '{field_name}' {reason} (use --skip-invalid to skip bad records)"
        )

    def add(self, where: str, build) -> None:
        try:
            ex = build()
        except Invalid as e:
            self.fail(where, e.field_name, e.reason)
            return
        if ex.id in self.seen_ids:
            self.fail(where, "id", f"{ex.id!r} is used twice")
            return
        self.seen_ids.add(ex.id)
        self.examples.append(ex)


def _load_squad(data: Any, col: _Collector) -> str:
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{col.path}: not SQuAD JSON: expected an object with a 'data' list")
    version = str(data.get("version", "v1.1"))
    for a, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            col.fail(f"data[{a}]", "paragraphs", "is missing or not a list")
            continue
        for p, para in enumerate(paragraphs):
            where_p = f"data[{a}].paragraphs[{p}]"
            if not isinstance(para, dict):
                col.fail(where_p, "paragraph", "is not an object")
                continue
            try:
                context = check_text(para.get("context"), "context")
            except Invalid as e:
                qas = para.get("qas")
                for _ in range(len(qas) if isinstance(qas, list) and qas else 1):  # one failure per question
                    col.fail(where_p, e.field_name, e.reason)
                continue
            qas = para.get("qas")
            if not isinstance(qas, list):
                col.fail(where_p, "qas", "is missing or not a list")
                continue
            for q, qa in enumerate(qas):
                if not isinstance(qa, dict):
                    col.fail(f"{where_p}.qas[{q}]", "qa", "is not an object")
                    continue
                qid = qa.get("id")
                where = f"id {qid!r}" if isinstance(qid, str) else f"{where_p}.qas[{q}]"

                def build(qa=qa, context=context) -> Example:
                    qid = check_text(qa.get("id"), "id")
                    question = check_text(qa.get("question"), "question")
                    impossible = bool(qa.get("is_impossible", False))
                    raw = qa.get("answers", [])
                    if not isinstance(raw, list):
                        raise Invalid("answers", "must be a list")
                    for k, ans in enumerate(raw):
                        if not isinstance(ans, dict):
                            raise Invalid(f"answers[{k}]", "must be an object with text and answer_start")
                    texts = [ans.get("text") for ans in raw]
                    starts = [ans.get("answer_start") for ans in raw]
                    answers = _make_answers(context, texts, starts, "answers")
                    if not answers and not impossible:
                        raise Invalid("answers", "is empty but is_impossible is not true")
                    if impossible:
                        answers = ()
                    return _example(qid, question, context, answers, impossible)

                col.add(where, build)
    return version


def _load_jsonl(text: str, col: _Collector) -> None:
    # split on "\n" only: str.splitlines() would also split inside strings holding U+2028 or U+0085
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            col.fail(where, "line", f"is not valid JSON ({json_error(e, line=False)})")
            continue
        except RecursionError:
            col.fail(where, "line", "is nested too deeply")
            continue
        if not isinstance(rec, dict):
            col.fail(where, "line", "is not a JSON object")
            continue
        if isinstance(rec.get("id"), str):
            where = f"line {n} (id {rec['id']!r})"

        def build(rec=rec) -> Example:
            qid = check_text(rec.get("id"), "id")
            question = check_text(rec.get("question"), "question")
            context = check_text(rec.get("context"), "context")
            answers = rec.get("answers", {"text": [], "answer_start": []})
            if not isinstance(answers, dict):
                raise Invalid("answers", "must be an object {'text': [...], 'answer_start': [...]}")
            texts, starts = answers.get("text", []), answers.get("answer_start", [])
            if not isinstance(texts, list) or not isinstance(starts, list):
                raise Invalid("answers", "text and answer_start must be lists")
            gold = _make_answers(context, texts, starts, "answers")
            return _example(qid, question, context, gold, not gold)

        col.add(where, build)


def load_dataset(path: str | Path, skip_invalid: bool = False) -> Dataset:
    """Read a SQuAD JSON or HF-layout JSONL file (optionally gzipped) into validated examples."""
    path = Path(path)
    text = open_text(path, expect="a .json, .jsonl or .gz file", newlines=True)
    col = _Collector(path, skip_invalid)
    if _is_jsonl(path, text):
        _load_jsonl(text, col)
        version = "v2.0" if any(e.is_impossible for e in col.examples) else "v1.1"
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: malformed JSON: {json_error(e)}") from None
        except RecursionError:
            raise DataError(f"{path}: malformed JSON: nested too deeply") from None
        declared = _load_squad(data, col).lstrip("v")
        v2 = declared.startswith("2") or any(e.is_impossible for e in col.examples)
        version = "v2.0" if v2 else "v1.1"
    if not col.examples:
        raise DataError(f"{path}: no valid questions found" + (f" ({sum(col.skipped.values())} skipped)"
                                                               if col.skipped else ""))
    return Dataset(col.examples, str(path), version, col.skipped)
