"""Shared pieces of the property-based (hypothesis) tests: wild text, JSON values, budgets, input counts.

Each property runs `FAST` inputs in the default test run and `DEEP` inputs under `-m slow`; `COUNTS`
records every input tried, and the test session prints the totals (see conftest.py).
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST, DEEP = 150, 2000
BUDGETS = [pytest.param(FAST, id="fast"), pytest.param(DEEP, id="deep", marks=pytest.mark.slow)]
COUNTS: Counter = Counter()

ODD_SPACE = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2009", "\u3000", "\u200b", "\ufeff", "\x00", "\x0b",
             "\u0301", "\U0001f600", "\u202e"]
WORDS = ["the", "Denver", "Broncos", "1889", "café", "naïve", "東京", "Москва", "don't", "U.S.", "e-mail",
         "ﬁne", "Ⅻ", "x²", "—", "...", "$3.5m", "İstanbul", "straße"]
_word = st.text(st.characters(codec="utf-8"), min_size=1, max_size=10)  # any character but lone surrogates


def wild_text(max_parts: int = 60) -> st.SearchStrategy[str]:
    """Random Unicode, odd whitespace and control characters, real words, empty strings, and huge strings."""
    parts = st.lists(st.one_of(_word, st.sampled_from(ODD_SPACE), st.sampled_from(WORDS)), max_size=max_parts)
    huge = st.tuples(st.sampled_from(WORDS + ODD_SPACE), st.integers(200, 1500)).map(lambda t: (t[0] + " ") * t[1])
    return st.one_of(st.text(st.characters(codec="utf-8"), max_size=200), parts.map("".join),
                     parts.map(" ".join), huge)


def json_values(max_leaves: int = 12) -> st.SearchStrategy:
    """Any JSON value (what a malformed record might hold)."""
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                     st.text(max_size=20))
    return st.recursive(leaf, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                       max_size=4),
                        max_leaves=max_leaves)


def fuzz(name: str, budget: int, prop, **strategies) -> None:
    """Run `prop(**drawn)` on `budget` generated inputs, counting each input tried under `name`."""

    @settings(max_examples=budget, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(**strategies)
    def run(**drawn):
        COUNTS[name] += 1
        prop(**drawn)

    run()
