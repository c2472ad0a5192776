"""The official SQuAD metric, written offline.

A line-for-line port of `evaluate-v1.1.py` and `evaluate-v2.0.py`: the same answer normalisation
(lower case, no punctuation, no articles a/an/the, single spaces), the same max over gold answers, and for
v2.0 the HasAns/NoAns split and the best-threshold sweep over no-answer scores.
"""

from __future__ import annotations

import collections
import re
import string

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def get_tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


# ---- v1.1 ----------------------------------------------------------------------------------------------------
def f1_score_v1(prediction: str, ground_truth: str) -> float:
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred)
    recall = num_same / len(gold)
    return (2 * precision * recall) / (precision + recall)


def exact_match_v1(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def evaluate_v1(golds: dict[str, list[str]], predictions: dict[str, str]) -> dict:
    """`golds`: id -> gold answer texts. Like the script, unanswered ids score 0 and count."""
    f1 = exact = total = 0.0
    for qid, truths in golds.items():
        total += 1
        if qid not in predictions:
            continue
        pred = predictions[qid]
        exact += max(exact_match_v1(pred, t) for t in truths)
        f1 += max(f1_score_v1(pred, t) for t in truths)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


# ---- v2.0 ----------------------------------------------------------------------------------------------------
def compute_exact(a_gold: str, a_pred: str) -> int:
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return float(gold_toks == pred_toks)
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def get_raw_scores(golds: dict[str, list[str]], preds: dict[str, str]) -> tuple[dict, dict]:
    exact_scores, f1_scores = {}, {}
    for qid, answers in golds.items():
        gold_answers = [a for a in answers if normalize_answer(a)] or [""]
        if qid not in preds:
            continue
        a_pred = preds[qid]
        exact_scores[qid] = max(compute_exact(a, a_pred) for a in gold_answers)
        f1_scores[qid] = max(compute_f1(a, a_pred) for a in gold_answers)
    return exact_scores, f1_scores


def apply_no_ans_threshold(scores, na_probs, qid_to_has_ans, thresh):
    new_scores = {}
    for qid, s in scores.items():
        pred_na = na_probs[qid] > thresh
        new_scores[qid] = float(not qid_to_has_ans[qid]) if pred_na else s
    return new_scores


def make_eval_dict(exact_scores, f1_scores, qid_list=None) -> dict:
    if not qid_list:
        total = len(exact_scores)
        return collections.OrderedDict(
            [
                ("exact", 100.0 * sum(exact_scores.values()) / total),
                ("f1", 100.0 * sum(f1_scores.values()) / total),
                ("total", total),
            ]
        )
    total = len(qid_list)
    return collections.OrderedDict(
        [
            ("exact", 100.0 * sum(exact_scores[k] for k in qid_list) / total),
            ("f1", 100.0 * sum(f1_scores[k] for k in qid_list) / total),
            ("total", total),
        ]
    )


def find_best_thresh(preds, scores, na_probs, qid_to_has_ans):
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score = num_no_ans
    best_score = cur_score
    best_thresh = 0.0
    qid_list = sorted(na_probs, key=lambda k: na_probs[k])
    for qid in qid_list:
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def evaluate_v2(
    golds: dict[str, list[str]], preds: dict[str, str], na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict:
    """The v2.0 script's output dict. `na_probs` (id -> no-answer score) adds best_exact/best_f1 and their
    thresholds, as the script's --na-prob-file does."""
    qid_to_has_ans = {qid: bool([a for a in ans if normalize_answer(a)]) for qid, ans in golds.items()}
    has_ans = [k for k, v in qid_to_has_ans.items() if v]
    no_ans = [k for k, v in qid_to_has_ans.items() if not v]
    probs = na_probs if na_probs is not None else {k: 0.0 for k in preds}
    exact_raw, f1_raw = get_raw_scores(golds, preds)
    exact_thresh = apply_no_ans_threshold(exact_raw, probs, qid_to_has_ans, na_prob_thresh)
    f1_thresh = apply_no_ans_threshold(f1_raw, probs, qid_to_has_ans, na_prob_thresh)
    out = make_eval_dict(exact_thresh, f1_thresh)
    if has_ans:
        for k, v in make_eval_dict(exact_thresh, f1_thresh, qid_list=has_ans).items():
            out[f"HasAns_{k}"] = v
    if no_ans:
        for k, v in make_eval_dict(exact_thresh, f1_thresh, qid_list=no_ans).items():
            out[f"NoAns_{k}"] = v
    if na_probs is not None:
        best_exact, exact_t = find_best_thresh(preds, exact_raw, na_probs, qid_to_has_ans)
        best_f1, f1_t = find_best_thresh(preds, f1_raw, na_probs, qid_to_has_ans)
        out["best_exact"], out["best_exact_thresh"] = best_exact, exact_t
        out["best_f1"], out["best_f1_thresh"] = best_f1, f1_t
    return dict(out)
