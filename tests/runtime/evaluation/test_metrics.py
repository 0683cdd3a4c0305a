"""Metric functions against hand-computed cases."""

from __future__ import annotations

import pytest

from lloco_runtime.evaluation import metrics as M

OPTS = ["Paris is the capital", "Lyon on the Rhone", "Marseille by the sea", "Lille in the north"]


@pytest.mark.parametrize(
    "text, want",
    [
        ("The  Eiffel Tower!", "eiffel tower"),
        ("An apple, a pear and THE plum.", "apple pear and plum"),
        ("theatre", "theatre"),  # articles only as whole words
        ("", ""),
    ],
)
def test_normalize_answer(text, want):
    assert M.normalize_answer(text) == want


def test_exact_match_and_f1_by_hand():
    assert M.exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert M.exact_match("Eiffel Tower in Paris", "Eiffel Tower") == 0.0
    # pred: eiffel tower in paris (4), gold: eiffel tower (2): P = 2/4, R = 2/2 -> F1 = 2/3
    assert M.token_f1("the Eiffel Tower in Paris", "Eiffel Tower") == pytest.approx(2 / 3)
    # pred: x x y (3), gold: x y y z (4): common = min(2,1) + min(1,2) = 2, P = 2/3, R = 2/4 -> F1 = 4/7
    assert M.token_f1("x x y", "x y y z") == pytest.approx(4 / 7)
    assert M.token_f1("nothing shared", "other words") == 0.0
    assert M.token_f1("", "") == 1.0 and M.token_f1("the", "word") == 0.0


def test_max_over_golds():
    golds = ["October 1973", "October", "1973"]
    assert M.max_over_golds(M.exact_match, "october", golds) == 1.0
    # "in october 1973" vs "October 1973": P = 2/3, R = 1 -> 0.8 (the best of the three golds)
    assert M.max_over_golds(M.token_f1, "in October 1973", golds) == pytest.approx(0.8)
    assert M.max_over_golds(M.token_f1, "x", []) == 0.0


def test_contains_answer():
    assert M.contains_answer("The number is 2416.", ["2416"]) == 1.0
    assert M.contains_answer("The number is 24160.", ["2416"]) == 0.0  # whole tokens only
    assert (
        M.contains_answer(
            "Eat a sandwich and sit in Dolores Park on a sunny day!",
            ["eat a sandwich and sit in Dolores Park on a sunny day"],
        )
        == 1.0
    )


@pytest.mark.parametrize(
    "text, want",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("b", "B"),
        ("C.", "C"),
        ("[D]", "D"),
        ("Answer: B", "B"),
        ("The answer is (c).", "C"),
        ("answer is d because ...", "D"),
        ("Option A", "A"),
        ("b) Lyon on the Rhone", "B"),
        ("(C) Marseille", "C"),
        ("D: Lille", "D"),
        ("B is correct", "B"),
        ("A", "A"),
        ("A) Paris", "A"),
        ("  \nB\nbecause the text says so", "B"),
        ("I think it is (D)", "D"),
        ("Marseille by the sea, clearly.", "C"),  # option text inside the answer
        ("Lyon", "B"),  # token F1 with "lyon on rhone": P = 1, R = 1/3 -> 0.5, the unique best
        ("E", None),
        ("(F)", None),  # not among four options
        ("A man walked in.", None),  # the article, not option A
        ("", None),
        ("no idea", None),
    ],
)
def test_parse_choice(text, want):
    assert M.parse_choice(text, OPTS) == want


def test_parse_choice_two_options_only_allows_a_b():
    assert M.parse_choice("C", ["yes", "no"]) is None
    assert M.parse_choice("no", ["yes", "no"]) == "B"


def test_format_options():
    assert M.format_options(["x ", "y"]) == "A) x\nB) y"


def test_rouge_by_hand():
    pred, ref = "the cat sat on the mat", "The cat lay on the mat."
    # unigrams: the x2, cat, on, mat shared -> 5 of 6 each side -> P = R = F = 5/6
    assert M.rouge_n(pred, ref, 1) == pytest.approx(5 / 6)
    # bigrams: "the cat", "on the", "the mat" shared -> 3 of 5 each side -> 3/5
    assert M.rouge_n(pred, ref, 2) == pytest.approx(3 / 5)
    # LCS "the cat on the mat" = 5 -> 5/6
    assert M.rouge_l(pred, ref) == pytest.approx(5 / 6)
    # "a b c d" vs "a c e": LCS = 2 (a c), P = 2/4, R = 2/3 -> F = 4/7; no shared bigram
    assert M.rouge_l("a b c d", "a c e") == pytest.approx(4 / 7)
    assert M.rouge_n("a b c d", "a c e", 1) == pytest.approx(4 / 7)
    assert M.rouge_n("a b c d", "a c e", 2) == 0.0
    # LCS is not contiguous: "a x b y c" vs "a b c": LCS 3, P = 3/5, R = 1 -> 3/4
    assert M.rouge_l("a x b y c", "a b c") == pytest.approx(3 / 4)
    assert M.rouge_n("", "a b", 1) == 0.0


def test_rouge_max_over_references():
    r = M.rouge("the cat sat", ["dogs bark", "the cat sat"])
    assert r == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert M.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # textbook case (CLRS)
