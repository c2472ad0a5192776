"""The metric against values worked out by hand from the official scripts' definitions."""

import pytest

from spanqa.metric import compute_f1, evaluate_v1, evaluate_v2, f1_score_v1, normalize_answer


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("an apple, a pear & the plum.", "apple pear plum"),
        ("  Multiple\t spaces\n", "multiple spaces"),
        ("theater thematic", "theater thematic"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("Ça va?", "ça va"),  # accents kept, punctuation (ASCII only) removed
        ("«quoted»", "«quoted»"),  # non-ASCII punctuation is not in string.punctuation
    ],
)
def test_normalisation(raw, norm):
    assert normalize_answer(raw) == norm


def test_v1_cases():
    golds = {
        "articles": ["Eiffel Tower"],
        "punct": ["denver broncos"],
        "partial": ["apple pie"],
        "several": ["Broncos", "Denver Broncos", "the Denver Broncos team"],
        "empty": ["something"],
        "missing": ["never answered"],
    }
    preds = {"articles": "the Eiffel Tower", "punct": "Denver Broncos!", "partial": "an apple",
             "several": "Denver Broncos", "empty": ""}
    r = evaluate_v1(golds, preds)
    # EM: articles 1, punct 1, partial 0, several 1, empty 0, missing 0 -> 3/6
    assert r["exact_match"] == pytest.approx(100 * 3 / 6)
    # F1: 1 + 1 + (p=1, r=1/2 -> 2/3) + 1 + 0 + 0
    assert r["f1"] == pytest.approx(100 * (3 + 2 / 3) / 6)


def test_f1_counts_repeated_tokens_once_each():
    # common tokens: red x1, blue x1 -> precision 2/3, recall 2/3
    assert f1_score_v1("red red blue", "red blue blue") == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))


def test_v2_no_answer_and_threshold_sweep():
    golds = {"h1": ["Paris"], "h2": ["blue whale"], "n1": [], "n2": [""]}
    preds = {"h1": "Paris", "h2": "whale", "n1": "", "n2": "London"}
    r = evaluate_v2(golds, preds)
    assert r["total"] == 4 and r["HasAns_total"] == 2 and r["NoAns_total"] == 2
    assert r["exact"] == pytest.approx(100 * (1 + 0 + 1 + 0) / 4)
    assert r["f1"] == pytest.approx(100 * (1 + 2 * 1 * 0.5 / 1.5 + 1 + 0) / 4)
    assert r["NoAns_exact"] == pytest.approx(50.0)
    assert compute_f1("", "") == 1.0 and compute_f1("x", "") == 0.0

    # sweep: questions sorted by no-answer score; abstaining on n2 (score 0.9) and above is best
    best_text = {"h1": "Paris", "h2": "blue whale", "n1": "Rome", "n2": "London"}
    na = {"h1": -3.0, "h2": -1.0, "n1": 2.0, "n2": 0.5}
    r2 = evaluate_v2(golds, best_text, na_probs=na)
    # threshold -1.0: answer h1, h2 (both right), abstain n1, n2 (both right) -> 4/4
    assert r2["best_exact"] == pytest.approx(100.0) and r2["best_exact_thresh"] == -1.0
    assert r2["best_f1"] == pytest.approx(100.0)
