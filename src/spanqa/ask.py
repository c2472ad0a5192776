"""Ask a collection: BM25 finds K passages, the reader reads them all, and the answers are ranked across passages.

    index = Index.build(["docs/"], "my-index")          # or Index.load("my-index"); `spanqa index` / `spanqa ask`
    result = index.ask("Who wrote Pride and Prejudice?", passages=10, top_k=3)
    a = result.best                                      # a.text == index.document_text(a.doc)[a.start:a.end]
    a.text, a.score, a.document, a.source, a.start, a.end, a.passage.text

**One score for every passage.** The passages of all questions go through `Reader.predict` together (windows sorted
by length into shared batches). Each span has the reader's P_begin(i)·P_end(j), a probability within its window
(`reader_score`); but a reader trained only on passages that hold the answer spreads its probability over some span
of *every* passage, so ranking by it alone gets worse the more passages are read. The answers are ranked by

    score = log [P_begin(i)·P_end(j) / (P_begin(CLS)·P_end(CLS))] + bm25_weight · BM25(passage)

the span's log-odds against the window's [CLS] (the softmax's normaliser cancels: what is left is how much the
reader prefers the span to "not here" in that passage) plus the passage's retrieval score (`rank_score`). Chosen on
350 SQuAD *training* questions (a seeded sample; the dev questions stay the benchmark's test set) over the 20,963
train + dev paragraphs, the shipped model reading the top 20 passages of each, EM at K = 1 / 5 / 10 / 20
(`python benchmarks/rank_score.py --questions 350`):

    P_begin·P_end alone                59.1 / 44.0 / 33.7 / 28.3    (more passages, worse answers)
    log-odds against [CLS]             59.1 / 64.3 / 60.9 / 56.6
    P_begin·P_end, + 1.0 · BM25        59.1 / 61.4 / 61.4 / 61.7
    log-odds against [CLS] + w · BM25  w = 0.7: 59.1 / 66.9 / 67.1 / 65.7;  w = 1.0: 59.1 / 67.1 / 67.4 / 67.4;
                                       w = 1.5: 59.1 / 66.6 / 67.4 / 68.6
so the BM25 score is fused (weight 1.0: `--bm25-weight`, AskConfig.bm25_weight; 0 turns it off). (The model was
trained on those questions' paragraphs, so the absolute numbers are higher than on dev; the comparison is the point.)
Re-checked for the abstaining model on 300 questions of the 22 training articles it was not continued on
(`--data held-neg.json.gz`): P_begin·P_end alone 54.7 / 61.3 / 60.3 / 60.0; log-odds 54.7 / 62.7 / 63.7 / 63.3; the
calibrated P(right) 54.7 / 62.7 / 63.0 / 63.3; log-odds + 1.0 · BM25 54.7 / 63.0 / 65.3 / 65.7 (1.5: 66.0 at K = 10,
two questions more); pooling each answer's score over the passages that hold it (log-sum-exp) 54.3 / 62.7 / 65.0 /
65.3. So the rule and the weight stay.

**Each answer once.** Overlapping passages and repeated documents find the same answer more than once; answers
are grouped by their text normalised as the SQuAD metric does (case, punctuation, articles, spaces), the best
scored of each group is the answer, and `also_in` lists the other places (document and offsets) where the same
answer was found, best first.

**No answer** when nothing is retrieved (no passage shares a word with the question) or the reader abstains on
every passage it read (`says_no_answer`, the one rule to tune when an abstaining model calibrates its null score).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from spanqa.batch_answer import AnswerFileStats, stream_file
from spanqa.collection import Collection, Passage
from spanqa.config import AskConfig
from spanqa.decoding import SpanCandidate
from spanqa.errors import ConfigError
from spanqa.metric import normalize_answer
from spanqa.reader import Prediction, Reader, check_flags
from spanqa.scoring import TokenProbs
from spanqa.validation import Invalid, check_counts, check_text

__all__ = ["AskResult", "CollectionAnswer", "Index", "says_no_answer"]


@dataclass
class CollectionAnswer:
    """An answer found in a collection: its text, where it is, and the passage it was read from."""

    text: str
    score: float  # rank_score: log-odds of the span against its window's [CLS], plus bm25_weight x BM25
    reader_score: float  # P_begin · P_end in the passage's window
    doc: int  # the document's index in the collection
    document: str  # the document's id
    source: str  # the file it came from
    start: int  # character offsets into the document's text: text == document_text[start:end]
    end: int
    passage: Passage
    bm25: float  # the passage's retrieval score
    title: str = ""
    page: int | None = None
    also_in: list[dict] = field(default_factory=list)  # other places holding the same answer, best first
    probabilities: TokenProbs | None = field(default=None, repr=False)  # the passage's P_begin/P_end, on request

    def as_dict(self) -> dict:
        p = self.passage
        out = {"text": self.text, "score": self.score, "reader_score": self.reader_score,
               "document": self.document, "source": self.source,
               "start": self.start, "end": self.end, "title": self.title, "page": self.page,
               "passage": {"index": p.index, "start": p.start, "end": p.end, "text": p.text, "bm25": self.bm25},
               "also_in": self.also_in}
        if self.probabilities is not None:
            out["probabilities"] = self.probabilities.to_dict()
        return out


@dataclass
class AskResult:
    """What the collection says about one question."""

    answers: list[CollectionAnswer]  # best first, each text once
    no_answer: bool
    passages: list[tuple[int, float]]  # the retrieved passages (index, BM25 score), best first

    @property
    def best(self) -> CollectionAnswer | None:
        return self.answers[0] if self.answers else None

    def to_dict(self, top_k: int | None = None) -> dict:
        answers = self.answers if top_k is None else self.answers[:top_k]
        return {"answers": [a.as_dict() for a in answers], "no_answer": self.no_answer,
                "passages_read": len(self.passages)}


def says_no_answer(preds: Sequence[Prediction]) -> bool:
    """The collection's "no answer": nothing was read, or the reader abstained on every passage it read."""
    return all(p.no_answer or not p.answers for p in preds)


def answer_key(text: str) -> str:
    """What makes two answers the same answer: the text as the SQuAD metric normalises it."""
    return normalize_answer(text) or " ".join(text.lower().split())


def rank_score(span: SpanCandidate, null_log_score: float, bm25: float, bm25_weight: float) -> float:
    """How answers from different passages compare (see the module's docstring)."""
    return span.log_score - null_log_score + bm25_weight * bm25


Found = tuple[SpanCandidate, float, Passage, float, dict, TokenProbs | None]  # span, its score, passage, BM25, ...


def rank(found: list[Found], top_k: int) -> list[CollectionAnswer]:
    """The spans of all passages of one question, best score first, each answer text once (the others where it
    was also found go to `also_in`); `found` holds (span, rank score, passage, BM25 score, document metadata,
    probabilities)."""
    order = sorted(range(len(found)), key=lambda i: -found[i][1])  # stable: ties keep the retrieval order
    best: dict[str, CollectionAnswer] = {}
    places: dict[str, set] = {}
    for i in order:
        span, score, passage, bm25, meta, probs = found[i]
        start, end = passage.start + span.start, passage.start + span.end
        key = answer_key(span.text)
        place = (passage.document, start, end)
        if key not in best:
            if len(best) == top_k:
                continue
            best[key] = CollectionAnswer(span.text, score, span.score, passage.document, meta["id"], meta["source"],
                                         start, end, passage, bm25, meta["title"], meta["page"], probabilities=probs)
            places[key] = {place}
        elif place not in places[key]:
            places[key].add(place)
            best[key].also_in.append({"document": meta["id"], "source": meta["source"], "start": start,
                                      "end": end, "text": span.text, "score": score})
    return list(best.values())


class Index(Collection):
    """A collection with a reader: `ask` retrieves passages, reads them and ranks the answers across them."""

    reader: Reader | None = None
    bm25_weight: float = AskConfig().bm25_weight

    @classmethod
    def load(cls, path: str | os.PathLike, reader: Reader | None = None) -> Index:
        """Open an index folder built by `Index.build` or `spanqa index`; `reader` defaults to the shipped model
        (loaded on the first question)."""
        index = super().load(path)
        index.reader = reader
        return index

    def ask(self, question: str, passages: int = AskConfig().passages, top_k: int = 1,
            probabilities: bool = False) -> AskResult:
        """Answer one question from the `passages` passages BM25 ranks highest."""
        return self.ask_many([question], passages, top_k, probabilities)[0]

    def ask_many(self, questions: Sequence[str], passages: int | Sequence[int] = AskConfig().passages,
                 top_k: int | Sequence[int] = 1,
                 probabilities: bool | Sequence[bool] = False, batch_size: int = 32) -> list[AskResult]:
        """Answer many questions; the passages of all of them are read in shared batches. `passages`, `top_k`
        and `probabilities` are one value for all questions, or one per question (a list or a 1-D numpy array)."""
        n = len(_checked_questions(questions))
        ks, tops = (_per_question(v, n, name) for v, name in ((passages, "passages"), (top_k, "top_k")))
        probs = check_flags(probabilities, n)
        if self.reader is None:
            self.reader = Reader.load()
        hits = [self.search(q, k) for q, k in zip(questions, ks, strict=True)]
        pairs = [(q, self.passage(p), bm25) for q, h in enumerate(hits) for p, bm25 in h]
        preds = self.reader.predict([questions[q] for q, _, _ in pairs], [p.text for _, p, _ in pairs],
                                    top_k=max(tops, default=1) + 2, batch_size=batch_size,
                                    probabilities=[probs[q] for q, _, _ in pairs]) if pairs else []
        results = []
        read = iter(zip(pairs, preds, strict=True))
        for q, h in enumerate(hits):
            mine = list(itertools.islice(read, len(h)))
            found = [(span, rank_score(span, pred.null_log_score, bm25, self.bm25_weight), passage, bm25,
                      self.documents[passage.document], pred.probabilities)
                     for (_, passage, bm25), pred in mine for span in pred.answers]
            results.append(AskResult(rank(found, tops[q]), says_no_answer([pred for _, pred in mine]), h))
        return results

    def ask_file(self, input_path: str | os.PathLike, output_path: str | os.PathLike,
                 passages: int = AskConfig().passages,
                 top_k: int = 1, chunk: int = 64, batch_size: int = 32, skip_invalid: bool = False,
                 progress: bool = True) -> AnswerFileStats:
        """Answer every `{"id", "question"}` line of a JSONL file into another (`{"id", "answers", "no_answer",
        "passages_read"}` lines): streaming, and resumable like `answer_file`."""
        passages, top_k, chunk, batch_size = check_counts(passages=passages, top_k=top_k, chunk=chunk,
                                                          batch_size=batch_size)

        def answer(records: list[tuple]) -> list[AskResult]:
            return self.ask_many([r[1] for r in records], passages, top_k, batch_size=batch_size)

        return stream_file(answer, input_path, output_path, ("question",), top_k, chunk, skip_invalid, progress)


def _checked_questions(questions: Sequence[str]) -> Sequence[str]:
    if isinstance(questions, str | bytes) or not isinstance(questions, Sequence):
        raise ConfigError(f"questions must be a list of strings, got {type(questions).__name__}")
    for q in questions:
        try:
            check_text(q, "question", record=False)
        except Invalid as e:
            raise ConfigError(str(e)) from None
    return questions


def _per_question(value, n: int, name: str) -> list[int]:
    """One count for all `n` questions, or one each: a list, a tuple or a 1-D integer numpy array (as the
    probabilities flags take arrays); a wrong length, or a value that is not a count, is refused by name."""
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise ConfigError(f"{name} must be one count or a 1-D array of {n} counts, got a {value.ndim}-D array")
    if not isinstance(value, np.ndarray | Sequence) or isinstance(value, str | bytes):
        return [check_counts(ConfigError, **{name: value})[0]] * n
    if len(value) != n:
        raise ConfigError(f"{name}: {len(value)} values for {n} questions")
    return [check_counts(ConfigError, **{f"{name}[{i}]": v})[0] for i, v in enumerate(value)]
