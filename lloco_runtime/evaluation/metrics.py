"""Answer-quality metrics: SQuAD F1/EM, multiple-choice letters, substring accuracy, ROUGE-1/2/L.

Pure Python, no model and no extra dependency, so they are cheap to test against hand-computed cases.

- **F1 / EM** follow the official SQuAD script: lower-case, drop punctuation and the articles a/an/the,
  collapse whitespace; token-level F1; the max over the gold answers.
- **Multiple choice**: :func:`parse_choice` reads the letter a model chose ("B", "(B)", "Answer: B",
  "b) ...") and falls back to matching an option's text.
- **ROUGE** F-measure (beta = 1) as in Lin (2004) and Google's ``rouge-score`` without stemming: lower-case,
  every non-alphanumeric character is a separator; ROUGE-N on clipped n-gram counts, ROUGE-L on the longest
  common subsequence; the max over references.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


# -- SQuAD ------------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Token-level F1 of the normalised strings (1.0 if both are empty, 0.0 if only one is)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(ref)
    return 2 * p * r / (p + r)


def max_over_golds(metric, prediction: str, golds: Sequence[str]) -> float:
    """``max(metric(prediction, g) for g in golds)``; 0.0 without golds."""
    return max((metric(prediction, g) for g in golds), default=0.0)


def contains_answer(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when some normalised gold answer occurs in the normalised prediction (needle / line retrieval)."""
    pred = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(g) and f" {normalize_answer(g)} " in pred for g in golds))


# -- multiple choice ----------------------------------------------------------------------------------------

_MARKER = re.compile(
    r"\b(?:answer|option|choice)\s*(?:is|:|=|-)?\s*(?:option\s*)?[\(\[]?([A-Za-z])\b[\)\]]?", re.IGNORECASE
)
_ALONE = re.compile(r"^[\(\[]?([A-Za-z])[\)\]]?[.:]?$")
_LEAD = re.compile(r"^[\(\[]([A-Za-z])[\)\]]|^([A-Za-z])[\).:\]]")
_LEAD_WORD = re.compile(r"^([A-Z])(?:\s+(\S+)|$)")
_PAREN = re.compile(r"[\(\[]([A-Z])[\)\]]")


def letters(n: int) -> str:
    """The first ``n`` option letters: ``letters(4) == "ABCD"``."""
    return string.ascii_uppercase[:n]


def format_options(options: Sequence[str]) -> str:
    """``A) first\\nB) second ...``: how options are shown to the model."""
    return "\n".join(f"{letter}) {opt.strip()}" for letter, opt in zip(letters(len(options)), options))


def parse_choice(text: str, options: Sequence[str]) -> str | None:
    """The option letter a model's answer chose, or None if it names none.

    In order: an explicit marker ("Answer: B", "the answer is (c)", "Option D"); the whole answer being a
    letter ("B", "(B)", "b."); a leading letter with a bracket or colon ("b) ...", "(C) ...", "D: ...");
    a leading capital followed by a space ("B is right"; "A" or "I" followed by a lower-case word is read as
    an English word, not an option); an option letter in brackets anywhere; finally the option whose text
    the answer contains, or, failing that, the one with the best token F1 (>= 0.5, no tie).
    """
    valid = letters(len(options))
    s = text.strip()
    if not s or not valid:
        return None
    first_line = s.splitlines()[0].strip()

    def ok(letter: str | None) -> str | None:
        return letter.upper() if letter and letter.upper() in valid else None

    m = _MARKER.search(s)
    if m and ok(m.group(1)):
        return ok(m.group(1))
    for cand in (first_line, s):
        m = _ALONE.match(cand)
        if m and ok(m.group(1)):
            return ok(m.group(1))
    m = _LEAD.match(first_line)
    if m and ok(m.group(1) or m.group(2)):
        return ok(m.group(1) or m.group(2))
    m = _LEAD_WORD.match(first_line)
    if m and ok(m.group(1)):
        nxt = m.group(2) or ""
        is_word = m.group(1) in "AI" and nxt[:1].islower() and nxt not in ("is", "was", "because", "seems")
        if not is_word:
            return ok(m.group(1))
    found = {x for x in _PAREN.findall(s) if x in valid}
    if len(found) == 1:
        return found.pop()
    return _match_option_text(s, options)


def _match_option_text(text: str, options: Sequence[str]) -> str | None:
    pred = normalize_answer(text)
    if not pred:
        return None
    norm = [normalize_answer(o) for o in options]
    inside = [i for i, o in enumerate(norm) if o and f" {o} " in f" {pred} "]
    if len(inside) == 1:
        return letters(len(options))[inside[0]]
    scores = [token_f1(text, o) for o in options]
    best = max(scores)
    if best >= 0.5 and scores.count(best) == 1:
        return letters(len(options))[scores.index(best)]
    return None


# -- ROUGE ------------------------------------------------------------------------------------------------

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """ROUGE tokenisation: lower-case, split on anything that is not a letter or digit (no stemming)."""
    return [t for t in _NON_ALNUM.split(text.lower()) if t]


def _f(overlap: float, n_pred: int, n_ref: int) -> float:
    if overlap == 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(prediction: str, reference: str, n: int) -> float:
    """ROUGE-N F-measure on clipped n-gram counts."""
    pred, ref = _ngrams(rouge_tokens(prediction), n), _ngrams(rouge_tokens(reference), n)
    return _f(sum((pred & ref).values()), sum(pred.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (sentence-level LCS over the whole text)."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    return _f(lcs_length(pred, ref), len(pred), len(ref))


def rouge(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """``{"rouge1", "rouge2", "rougeL"}`` F-measures, each the max over ``references``."""
    refs = list(references) or [""]
    return {
        "rouge1": max(rouge_n(prediction, r, 1) for r in refs),
        "rouge2": max(rouge_n(prediction, r, 2) for r in refs),
        "rougeL": max(rouge_l(prediction, r) for r in refs),
    }
