"""Question-aware literal tokens ("focus"): at answer time, a chunk's literal tokens are chosen for the question.

A cheat sheet of a mean-pooling encoder with literal tokens (the default) is, per group of consecutive
tokens, one pooled vector followed by some of the group's tokens kept as themselves. Offline the encoder
cannot know which of a paragraph's facts will be asked about, so it keeps names, numbers and the tokens
its selector ranks highest; on SQuAD the answer survives whole in about a third of the sheets.

Once the question is known, a better choice is cheap: the answer is nearly always near the words that the
question shares with the text. :func:`focus_positions` scores each word of the chunk by its closeness to
question words (exponential decay over word distance), keeps the question words themselves only as context
around them, and fills the budget with the offline prior (the encoder's rule-based salience: numbers and
capitalised words inside sentences). The number of kept tokens is exactly the offline budget
(:meth:`~lloco_runtime.encoder.ContextEncoder.literal_budget`), so a focused sheet has the same shape, the
same positions and the same compression ratio as the stored one, and the reader adapter reads it as is.

Several sheets read for one question (a retrieval's top k) share one budget
(:func:`shared_focus_positions`): the chunk the question points to keeps more of its text, a distractor
less, and each question word weighs by how rare it is among those chunks, relative to the rarest
(:func:`term_weights`), so the article's topic word, found in every retrieved chunk, does not pull the
budget away from the word that singles out the answer's chunk, and words that are in every chunk alike
(a needle retrieved several times) keep their full pull.

Nothing runs through a model: the pooled vectors of an encoder that pools input embeddings
(``summary_layer=0``) are an embedding lookup and a mean per group, so the focused sheet is rebuilt from the
chunk's tokens (its stored text) for the cost of a table lookup.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

#: words that say nothing about where an answer is (function words and question words)
_STOPWORDS_TEXT = (
    "a an the of in on at to for by with from and or but nor is are was were be been being am do does did "
    "done what which who whom whose when where why how that this these those it its as into onto than "
    "then there their theirs they them he she his her hers him we us our ours you your yours i me my mine "
    "not no can could would should will shall may might must have has had having about after before "
    "during over under between through up down out off so such also one two many much most more some any "
    "each other s t very just only same own too here if while because until against among per via name "
    "named called "
)
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)?", re.UNICODE)

#: word-distance decay of a question word's pull on its neighbours (in words); chosen on held-out
#: squad_train articles (the reader's validation split), never on the eval sets: the answer kept whole in
#: 55.5% -> 64.8% of single paragraphs (400 questions) going from 4 to 12 words, with PRIOR_WEIGHT 0.5 -> 0.2
DECAY_WORDS = 12.0
#: weight of the question-word proximity against the offline prior
PROXIMITY_WEIGHT = 3.0
#: a question word itself is worth less than its neighbours: the answer is near it, rarely it
MATCH_PENALTY = 1.5
#: weight of the offline prior (rule-based salience), the tie-breaker where no question word is near
PRIOR_WEIGHT = 0.2
#: a text word this long or longer matches a question word of the same first letters (plural, tense)
PREFIX = 5


def question_terms(question: str) -> frozenset[str]:
    """The question's content words, lowercased (stop words and question words dropped)."""
    return frozenset(w for w in (m.group(0).lower() for m in _WORD.finditer(question)) if w not in STOPWORDS)


def _key(word: str) -> str:
    m = _WORD.search(word)
    return m.group(0).lower() if m else ""


def weighted_match(word: str, weights: Mapping[str, float]) -> float:
    """How much ``word`` matches a question term, each term worth its weight: the term's weight for the
    term itself, 0.7 of it for a word sharing its first :data:`PREFIX` letters (plural, tense), else 0; the
    best matching term counts. Stop words never match."""
    k = _key(word)
    if not k or k in STOPWORDS:
        return 0.0
    best = weights.get(k, 0.0)
    if len(k) >= PREFIX:
        prefix = k[:PREFIX]
        best = max(
            [best] + [0.7 * w for t, w in weights.items() if len(t) >= PREFIX and t[:PREFIX] == prefix]
        )
    return best


def term_match(word: str, terms: Iterable[str]) -> float:
    """:func:`weighted_match` with every term worth 1: 1 for a question word, 0.7 for one sharing its first
    :data:`PREFIX` letters (e.g. plural), else 0."""
    return weighted_match(word, dict.fromkeys(terms, 1.0))


def term_weights(terms: frozenset[str], chunk_texts: Sequence[Sequence[str]]) -> dict[str, float]:
    """How much each question term says about where the answer is, among chunks read together, relative to
    the term that says most: an inverse document frequency over the chunks,
    ``log((N+1)/(df+0.5)) / log((N+1)/1.5)`` for a term found in ``df`` of the ``N`` chunks, divided by the
    largest of the question's (a term in no chunk weighs 0; every term weighs 1 when there is a single chunk).
    A question's topic word, present in every retrieved chunk, then stops pulling the budget away from the
    word that tells the right chunk apart; and where no word tells them apart (the question's words are in
    every chunk, as when a needle is retrieved several times), every term keeps its full pull rather than
    all fading together."""
    n = len(chunk_texts)
    if n <= 1:
        return {t: 1.0 for t in terms}
    norm = math.log((n + 1) / 1.5)
    out = {}
    for t in terms:
        single = {t: 1.0}
        df = sum(any(weighted_match(w, single) for w in texts) for texts in chunk_texts)
        out[t] = math.log((n + 1) / (df + 0.5)) / norm if df else 0.0
    top = max(out.values(), default=0.0)
    return {t: w / top for t, w in out.items()} if top > 0 else out


def word_scores(
    words: Sequence[str],
    terms: frozenset[str],
    prior: Sequence[float],
    weights: Mapping[str, float] | None = None,
) -> list[float]:
    """Per word: proximity to question words, minus the match itself, plus the standardised prior.
    ``weights``: per question term (:func:`term_weights`); all 1 when omitted."""
    n = len(words)
    if weights is None:
        weights = dict.fromkeys(terms, 1.0)
    match = [weighted_match(w, weights) for w in words]
    hits = [(j, m) for j, m in enumerate(match) if m]
    mean = sum(prior) / n if n else 0.0
    var = sum((p - mean) ** 2 for p in prior) / n if n else 0.0
    sd = math.sqrt(var) if var > 0 else 1.0
    out = []
    for i in range(n):
        pull = sum(m * math.exp(-abs(i - j) / DECAY_WORDS) for j, m in hits if j != i)
        out.append(PROXIMITY_WEIGHT * pull - MATCH_PENALTY * match[i] + PRIOR_WEIGHT * (prior[i] - mean) / sd)
    return out


def focus_positions(
    words: Sequence[Sequence[int]],
    texts: Sequence[str],
    question: str,
    prior: Sequence[float],
    budget: int,
    n_tokens: int,
) -> list[int]:
    """Token positions (ascending) to keep as literal tokens for ``question``: whole words by
    :func:`word_scores`, best first, while they fit ``budget``; single tokens in text order fill the rest.

    ``words``: the chunk's words as lists of token positions; ``texts``: each word's text; ``prior``: the
    offline salience of each word."""
    budget = min(budget, n_tokens)
    if budget <= 0:
        return []
    scores = word_scores(texts, question_terms(question), prior)
    keep: set[int] = set()
    for w in sorted(range(len(words)), key=lambda w: (-scores[w], w)):
        if len(keep) >= budget:
            break
        if len(keep) + len(words[w]) <= budget:
            keep.update(words[w])
    for pos in range(n_tokens):
        if len(keep) >= budget:
            break
        keep.add(pos)
    return sorted(keep)


def shared_focus_positions(
    chunks: Sequence[tuple[Sequence[Sequence[int]], Sequence[str], Sequence[float], int, int]],
    question: str,
) -> list[list[int]]:
    """Literal-token positions for several chunks read together for one ``question``, the chunks' budgets
    pooled: whole words of all chunks compete by :func:`word_scores` (proximity within their own chunk, each
    question term weighted by :func:`term_weights` over these chunks), so the chunk the question points to
    keeps more of its text and an unrelated one keeps less. The total kept
    equals the sum of the chunks' budgets (each chunk at most its own length); single tokens in text order
    fill what whole words cannot.

    ``chunks``: per chunk ``(words, texts, prior, budget, n_tokens)`` as :func:`focus_positions` takes them.
    Returns one ascending position list per chunk."""
    terms = question_terms(question)
    sizes = [n for *_, n in chunks]
    total = sum(min(budget, n) for *_, budget, n in chunks)
    weights = term_weights(terms, [texts for _w, texts, *_ in chunks])
    ranked: list[tuple[float, int, int]] = []
    for c, (words, texts, prior, _budget, _n) in enumerate(chunks):
        scores = word_scores(texts, terms, prior, weights)
        ranked.extend((-s, c, w) for w, s in enumerate(scores))
    ranked.sort()
    keep: list[set[int]] = [set() for _ in chunks]
    used = 0
    for _neg, c, w in ranked:
        if used >= total:
            break
        word = chunks[c][0][w]
        if used + len(word) <= total:
            keep[c].update(word)
            used += len(word)
    for c, n in enumerate(sizes):
        for pos in range(n):
            if used >= total:
                break
            if pos not in keep[c]:
                keep[c].add(pos)
                used += 1
    return [sorted(k) for k in keep]
