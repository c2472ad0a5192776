"""Mined unanswerable questions: a SQuAD v2.0-style training set from a v1.1-style one.

Negatives that share no words with the question teach nothing (word overlap rejects them), so every kind here stays
close to the gold paragraph, as SQuAD 2.0's own questions do:

    sentence_removed   the gold paragraph without the sentence(s) that hold the question's answers
    entity_swapped     the question with a key entity, number or year (one that the paragraph mentions) swapped
                       for another of the same kind from the same article, which the paragraph does not mention
    nearest_paragraph  the BM25-nearest other paragraph of the same article (bm25s)
    antonym_swapped    the question with one word swapped for its opposite (built -> demolished, largest ->
                       smallest, north -> south), where the paragraph never uses the opposite
    negated            the question negated ("How many were killed?" -> "How many were not killed?") over a
                       paragraph that negates nothing

`entity_swapped`, `antonym_swapped` and `negated` keep the gold paragraph and change the question only a little, as
SQuAD 2.0's entity-swap, antonym and negation questions do (together about half of its unanswerable ones, Rajpurkar
et al. 2018); `sentence_removed` and `nearest_paragraph` are easier, since the answer's sentence or topic is gone.

Every negative is checked before it is kept: for `sentence_removed` and `nearest_paragraph`, no gold answer string
(normalised as the official metric does) is left in the context; for the kinds over the gold paragraph (whose old
answers are still in it) the swapped-in entity or the opposite word (by its stem) is nowhere in the context, and a
negated question's paragraph holds no negation. Deterministic under a seed.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from spanqa.config import NegativesConfig
from spanqa.errors import DataError
from spanqa.metric import normalize_answer
from spanqa.validation import check_file, check_output, open_text, outputs_taken_back, same_file, write_atomic

KINDS = ("sentence_removed", "entity_swapped", "nearest_paragraph", "antonym_swapped", "negated")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_NUMBER = re.compile(r"\b\d[\d,]*(?:\.\d+)?\b")
_NAME = re.compile(r"\b[A-Z][\w'\-]*(?:\s+(?:of|de|von|van|and|for)?\s*[A-Z][\w'\-]*)*")
_SKIP_NAMES = {"What", "Which", "Who", "Whom", "Whose", "When", "Where", "Why", "How", "In", "On", "At", "The", "A",
               "An", "Is", "Are", "Was", "Were", "Did", "Do", "Does", "If", "For", "To", "By", "Of", "After", "Before",
               "During", "From", "With", "As", "I"}
_OPPOSITES = [
    ("built", "demolished"), ("opened", "closed"), ("open", "close"), ("first", "last"), ("largest", "smallest"),
    ("biggest", "smallest"), ("highest", "lowest"), ("most", "least"), ("before", "after"), ("earliest", "latest"),
    ("oldest", "newest"), ("longest", "shortest"), ("north", "south"), ("east", "west"), ("northern", "southern"),
    ("eastern", "western"), ("increase", "decrease"), ("increased", "decreased"), ("rise", "fall"), ("rose", "fell"),
    ("won", "lost"), ("win", "lose"), ("started", "ended"), ("began", "ended"), ("born", "died"),
    ("maximum", "minimum"), ("upper", "lower"), ("inner", "outer"), ("internal", "external"), ("major", "minor"),
    ("positive", "negative"), ("male", "female"), ("men", "women"), ("ancient", "modern"), ("private", "public"),
    ("higher", "lower"), ("larger", "smaller"), ("older", "younger"), ("best", "worst"), ("strongest", "weakest"),
    ("success", "failure"), ("accepted", "rejected"), ("allowed", "banned"), ("added", "removed"),
    ("imports", "exports"), ("import", "export"), ("bought", "sold"), ("buy", "sell"), ("hot", "cold"), ("wet", "dry"),
    ("top", "bottom"), ("early", "late"), ("below", "above"), ("inside", "outside"), ("legal", "illegal"),
    ("common", "rare"), ("rich", "poor"), ("same", "different"), ("less", "more"), ("fewer", "more"),
    ("supported", "opposed"), ("created", "destroyed"), ("invented", "abandoned"), ("founded", "dissolved"),
]
OPPOSITE = {a: b for a, b in _OPPOSITES} | {b: a for a, b in reversed(_OPPOSITES)}
_NEGATION = {"not", "no", "never", "nor", "neither", "none", "nothing", "without", "cannot", "failed", "fail",
             "fails", "refused", "unable", "except", "nobody", "lack", "lacked", "t"}  # "t": the end of "n't"
_AUX = re.compile(r"\b(is|are|was|were|has|have|had|can|could|will|would|should|did|does|do)\s+(\w+)")
_LAST_WORD = re.compile(r"(\w+)\s+([a-z]+)(\W*)$")  # the last word, and the one before it
_NOT_BEFORE = {"with", "to", "of", "for", "in", "on", "at", "from", "by", "about", "under", "into", "over", "as",
               "the", "his", "her", "its", "our", "a", "an", "their", "this", "that"}  # never "... not with?"


@dataclass
class Report:
    """What was mined, counted by kind, and what was tried and refused."""

    questions: int = 0
    answerable: int = 0
    negatives: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)  # kind -> candidates dropped by the checks
    heldout_articles: int = 0

    def to_dict(self) -> dict:
        total = self.answerable + sum(self.negatives.values())
        return {"questions_in": self.questions, "answerable": self.answerable,
                "negatives": {k: self.negatives[k] for k in KINDS}, "negatives_total": sum(self.negatives.values()),
                "unanswerable_share": round(sum(self.negatives.values()) / max(total, 1), 4),
                "refused_by_checks": dict(self.refused), "heldout_articles": self.heldout_articles}


def _norm_in(needle: str, haystack_norm: str) -> bool:
    n = normalize_answer(needle)
    return bool(n) and f" {n} " in f" {haystack_norm} "


def no_answer_left(context: str, answers: list[str]) -> bool:
    """True when no gold answer string, normalised, is left in the context (whole words)."""
    ctx = normalize_answer(context)
    return not any(_norm_in(a, ctx) for a in answers)


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the text's sentences (ends of one sentence to the start of the next included)."""
    cuts = [0] + [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if text[a:b].strip()]


def remove_answer_sentences(context: str, spans: list[tuple[int, int]]) -> str | None:
    """The context without every sentence that overlaps an answer span; None when nothing would be left."""
    kept = [(a, b) for a, b in sentences(context) if not any(s < b and e > a for s, e in spans)]
    text = "".join(context[a:b] for a, b in kept).strip()
    return text or None


def entities(text: str) -> list[tuple[str, str]]:
    """(kind, surface) of the numbers and capitalised names in a text. A one-word name that opens a sentence is
    skipped (it is capitalised because of where it stands), and a leading "The" is dropped."""
    out = [("number", m.group()) for m in _NUMBER.finditer(text)]
    for m in _NAME.finditer(text):
        name = re.sub(r"^The\s+", "", m.group().strip())
        opens_sentence = m.start() == 0 or re.search(r"[.!?:;\"\n]\s*$", text[max(0, m.start() - 3) : m.start()])
        if (opens_sentence and " " not in name) or name in _SKIP_NAMES:
            continue
        out.append(("name", name))
    return out


def swap_entity(question: str, context: str, pool: dict[str, list[str]], rng: random.Random) -> str | None:
    """The question with one of its entities that the context mentions swapped for an unmentioned one."""
    ctx = normalize_answer(context)
    keys = [(k, e) for k, e in entities(question) if _norm_in(e, ctx)]
    rng.shuffle(keys)
    for kind, old in keys:
        options = [e for e in pool.get(kind, []) if e != old and not _norm_in(e, ctx)]
        if options:
            new = rng.choice(options)
            return question.replace(old, new, 1)
    return None


@functools.lru_cache(maxsize=64)
def _stems(text: str) -> frozenset[str]:
    """The text's words, normalised as the official metric does, by Snowball stem (cached: a paragraph's questions
    repeat it)."""
    return frozenset(_stemmer().stemWords(normalize_answer(text).split()))


@functools.cache
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def swap_opposite(question: str, context: str, rng: random.Random) -> str | None:
    """The question with one of its words swapped for its opposite, which the context never uses (by stem)."""
    ctx = _stems(context)
    words = [m for m in re.finditer(r"\b[A-Za-z]+\b", question) if m.group().lower() in OPPOSITE]
    rng.shuffle(words)
    for m in words:
        new = OPPOSITE[m.group().lower()]
        if not _stems(new) & ctx:
            new = new.capitalize() if m.group()[0].isupper() else new
            return question[: m.start()] + new + question[m.end() :]
    return None


def negate(question: str, context: str) -> str | None:
    """The question negated, when neither it nor the context negates anything: "not" goes after an auxiliary that a
    lowercase word follows ("were not killed", "is not the"), or before the question's last word when that is a
    participle or follows do/did ("When was the cottage not added?", "When did the station not close?")."""
    if _NEGATION & set(re.findall(r"[a-z]+", question.lower() + " " + context.lower())):
        return None
    aux = _AUX.search(question)
    if aux is None:
        return None
    last = _LAST_WORD.search(question)
    if last and (last.start(2) <= aux.end(2) or {last.group(1).lower(), last.group(2)} & _NOT_BEFORE):
        last = None
    if last and (aux.group(1) in ("did", "does", "do") or last.group(2).endswith(("ed", "en", "wn", "lt"))):
        return question[: last.start(2)] + "not " + question[last.start(2) :]
    if aux.group(1) not in ("did", "does", "do") and aux.group(2).islower():
        return question[: aux.end(1)] + " not" + question[aux.end(1) :]
    return None


def _article_pool(article: dict) -> dict[str, list[str]]:
    pool: dict[str, set[str]] = {}
    for para in article["paragraphs"]:
        for kind, e in entities(para["context"]):
            pool.setdefault(kind, set()).add(e)
    return {k: sorted(v) for k, v in pool.items()}


def _nearest_paragraphs(article: dict) -> callable:
    """question, paragraph index -> the other paragraphs of the article, BM25-nearest first."""
    import bm25s

    texts = [p["context"] for p in article["paragraphs"]]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)

    def nearest(question: str, own: int) -> list[int]:
        k = len(texts)
        docs, _ = retriever.retrieve(bm25s.tokenize([question], stopwords="en", show_progress=False), k=k,
                                     show_progress=False)
        return [int(d) for d in docs[0] if int(d) != own]

    return nearest


def _mine_one(kind: str, qa: dict, p: int, article: dict, pool, nearest, rng) -> tuple[dict, int | str] | None:
    """A negative of `kind` for one question: (qa record, paragraph index or a new context), or None."""
    para = article["paragraphs"][p]
    answers = [a["text"] for a in qa["answers"]]
    neg = {"id": f"{qa['id']}-neg-{kind}", "question": qa["question"], "answers": [], "is_impossible": True}
    if kind == "sentence_removed":
        spans = [(a["answer_start"], a["answer_start"] + len(a["text"])) for a in qa["answers"]]
        text = remove_answer_sentences(para["context"], spans)
        return (neg, text) if text and no_answer_left(text, answers) else None
    if kind in ("entity_swapped", "antonym_swapped", "negated"):
        if kind == "entity_swapped":
            q = swap_entity(qa["question"], para["context"], pool, rng)
        elif kind == "antonym_swapped":
            q = swap_opposite(qa["question"], para["context"], rng)
        else:
            q = negate(qa["question"], para["context"])
        return ({**neg, "question": q}, p) if q else None
    for other in nearest(qa["question"], p)[:3]:
        if no_answer_left(article["paragraphs"][other]["context"], answers):
            return neg, other
    return None


def mine_article(article: dict, cfg: NegativesConfig, rng: random.Random, report: Report) -> dict:
    """The article as SQuAD v2.0: its questions, plus negatives for a share of them."""
    paras = [{"context": p["context"], "qas": [{**qa, "is_impossible": False} for qa in p.get("qas", [])]}
             for p in article["paragraphs"]]
    extra_paras: dict[int, list[dict]] = {}
    pool, nearest = _article_pool(article), None
    for p, para in enumerate(article["paragraphs"]):
        for qa in para.get("qas", []):
            report.questions += 1
            if not qa.get("answers"):
                continue
            report.answerable += 1
            if rng.random() >= cfg.ratio:
                continue
            kinds = list(KINDS)
            rng.shuffle(kinds)
            for kind in kinds:
                if kind == "nearest_paragraph" and nearest is None:
                    if len(article["paragraphs"]) < 2:
                        continue
                    nearest = _nearest_paragraphs(article)
                mined = _mine_one(kind, qa, p, article, pool, nearest, rng)
                if mined is None:
                    report.refused[kind] += 1
                    continue
                neg, where = mined
                if isinstance(where, str):
                    extra_paras.setdefault(p, []).append({"context": where, "qas": [neg]})
                else:
                    paras[where]["qas"].append(neg)
                report.negatives[kind] += 1
                break
    out = []
    for p, para in enumerate(paras):
        out.append(para)
        out.extend(extra_paras.get(p, []))
    return {"title": article.get("title", ""), "paragraphs": out}


@outputs_taken_back()
def mine(cfg: NegativesConfig) -> Report:
    """Read cfg.data, write cfg.out (and cfg.holdout_out); return the counts."""
    _check_outputs(cfg)
    try:
        data = json.loads(open_text(cfg.data, expect="a SQuAD .json or .json.gz file", newlines=True))
    except json.JSONDecodeError as e:
        raise DataError(f"{cfg.data}: malformed JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list) or not data["data"]:
        raise DataError(f"{cfg.data}: not SQuAD JSON: expected an object with a non-empty 'data' list")
    articles = data["data"]
    order = list(range(len(articles)))
    random.Random(cfg.seed).shuffle(order)
    n_hold = round(cfg.holdout * len(articles)) if cfg.holdout_out else 0
    if cfg.holdout_out and cfg.holdout > 0:  # a few articles: at least one held out, at least one kept
        n_hold = min(max(n_hold, 1), len(articles) - 1)
    held = set(order[:n_hold])
    report = Report(heldout_articles=n_hold)
    rng = random.Random(cfg.seed)
    main, side = [], []
    for i, article in enumerate(articles):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DataError(f"{cfg.data}: data[{i}]: field 'paragraphs' is missing or not a list")
        (side if i in held else main).append(mine_article(article, cfg, rng, report))
    _write(cfg.out, main)
    if cfg.holdout_out:
        _write(cfg.holdout_out, side)
    return report


def _check_outputs(cfg: NegativesConfig) -> None:
    """Before any work: neither file written is the input, nor are they one file, however spelled."""
    data = check_file(cfg.data, expect="a SQuAD .json or .json.gz file")
    check_output(cfg.out, "--out", inputs=[data])
    if cfg.holdout_out:
        check_output(cfg.holdout_out, "--holdout-out", inputs=[data])
        if same_file(cfg.out, cfg.holdout_out):
            raise DataError(f"--holdout-out {cfg.holdout_out}: is --out too; the held-out articles would overwrite "
                            "the others: choose another --holdout-out")


def _write(path: str, articles: list[dict]) -> None:
    """Write atomically: a kill never leaves half a file under the final name (validation.atomic_file)."""
    import gzip

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps({"version": "v2.0", "data": articles}, ensure_ascii=False).encode()
    write_atomic(out, gzip.compress(raw, mtime=0) if out.suffix == ".gz" else raw)
