"""Extractive questions generated from a group's own chunks, for ``lloco finetune`` without QA data.

Rule-based (regular expressions, no model and no downloaded NLP data): in each sentence, find dates, years,
amounts (money, percentages), counts (a number before a noun) and names (capitalised spans not at the start
of the sentence), and turn the sentence into a wh-question by replacing the span in place with a wh-phrase
(``in 1842`` -> ``in what year``, ``by Edward Sorin`` -> ``by whom``, ``12 students`` -> ``how many
students``). The answer is always the exact span of the chunk text, so the chunk answers its question.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

#: kinds of generated questions, in the order overlapping spans are preferred
KINDS = ("date", "amount", "count", "year", "person", "place", "name")

_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December|"
    r"Jan\.|Feb\.|Aug\.|Sept?\.|Oct\.|Nov\.|Dec\.)"
)
_DATE = re.compile(
    rf"\b(?:{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{3,4}}|\d{{1,2}}\s+{_MONTH}\s+\d{{3,4}}"
    rf"|{_MONTH}\s+\d{{4}})\b"
)
_SCALE = r"(?:\s(?:thousand|million|billion|trillion))?"
_AMOUNT = re.compile(
    rf"(?:US)?[$£€¥]\s?\d[\d,]*(?:\.\d+)?{_SCALE}|\b\d[\d,]*(?:\.\d+)?\s?(?:%|percent\b|per cent\b)"
)
_WORDNUM = r"(?:two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty|hundred)"
_COUNT = re.compile(
    rf"\b(\d[\d,]*(?:\.\d+)?{_SCALE}|{_WORDNUM}(?:\s(?:hundred|thousand|million))?)"
    r"\s+(?!(?:of|to|and|or|in|on|at|by|for|from|the|a|an|is|was|were|are|had|has)\b)([a-z]{3,}s)\b"
)
_YEAR = re.compile(r"\b(?:1[0-9]{3}|20[0-9]{2})(?:s\b|\b)(?![,.]?\d)")
_YEAR_BEFORE = re.compile(
    r"(?:\b(?:in|since|until|by|from|to|during|before|after|around|of|c\.)\s+|[-–(]\s*)$", re.IGNORECASE
)
_CAP = r"[A-ZÀ-ÖØ-Þ][\w'’.-]*"
_NAME = re.compile(rf"{_CAP}(?:\s+(?:(?:of|the|de|da|del|du|la|le|von|van|der|for|on)\s+)*{_CAP})*")
_DAYS = {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}
_ROLE = re.compile(r"\b(?:the|a|an)\s+([a-z]{3,})\s+$")
_PERSON_ROLE = re.compile(
    r"(?:[a-z]+(?:ist|ian)|[a-z]*(?:writer|maker|player|singer|leader|founder|owner|keeper|"
    r"engineer|astronomer|actor|actress|author|director|governor|emperor|officer|painter)|"
    r"king|queen|prince|princess|pope|general|captain|president|poet|saint|bishop|minister)"
)
_NOT_NAMES = {
    "I",
    "The",
    "A",
    "An",
    "It",
    "In",
    "On",
    "At",
    "By",
    "He",
    "She",
    "They",
    "This",
    "That",
    "These",
    "Those",
    "However",
    "Although",
    "When",
    "While",
    "After",
    "Before",
    "During",
    "Since",
    "His",
    "Her",
}
_ORG_WORDS = {
    "University",
    "College",
    "School",
    "Church",
    "Company",
    "Corporation",
    "Inc",
    "Inc.",
    "Party",
    "Council",
    "Association",
    "Society",
    "Institute",
    "Museum",
    "Office",
    "Department",
    "Army",
    "Navy",
    "Court",
    "House",
    "Hall",
    "Street",
    "River",
    "Mountains",
    "Ocean",
    "Sea",
    "Island",
    "Islands",
    "Kingdom",
    "Empire",
    "Republic",
    "States",
    "Union",
    "War",
    "Act",
    "Award",
    "Awards",
    "Prize",
    "League",
    "Lake",
    "Peninsula",
    "Center",
    "Centre",
    "Theatre",
    "Park",
    "Bay",
    "Valley",
    "County",
    "City",
    "Hill",
    "Point",
    "Castle",
    "Cathedral",
    "Bridge",
    "Station",
    "Square",
    "Road",
    "Avenue",
}
_PERSON_NEXT = re.compile(
    r"\s*(?:,\s*(?:who|a|an|the)\b|(?:was|is|had|has|became|won|wrote|said|led|died|married|"
    r"joined|returned|served|argued|claimed|stated|[a-z]{3,}ed)\b)"
)
_CONNECT = {"of", "the", "for", "on"}
_PLACE_BEFORE = re.compile(r"\b(?:in|at|on|near|across|throughout)\s+(?:the\s+)?$", re.IGNORECASE)
_SENT_END = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREV = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Gen|Col|Lt|Mt|No|vs|etc|ca|c|e\.g|i\.e)|\b[A-Z]|\.[A-Z])$"
)
_ALPHA_WORD = re.compile(r"[^\W\d_]{2,}")


class ChunkLike(Protocol):
    chunk_id: int
    text: str


@dataclass(frozen=True)
class GeneratedQuestion:
    """A question whose answer is ``chunk_text[start:end]`` of chunk ``chunk_id``; ``sentence`` is the source
    sentence (as in the chunk) and ``kind`` one of :data:`KINDS`."""

    question: str
    answer: str
    chunk_id: int
    sentence: str
    kind: str
    start: int
    end: int


def sentences(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the sentences of ``text`` (abbreviations and initials do not end
    one)."""
    spans, start = [], 0
    for m in _SENT_END.finditer(text):
        if _ABBREV.search(text[start : m.start()]):
            continue
        spans.append((start, m.start() + 1))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return [(a + len(text[a:b]) - len(text[a:b].lstrip()), b) for a, b in spans if text[a:b].strip()]


def _candidates(s: str) -> list[tuple[int, int, int, int, str, str]]:
    """``(ans_start, ans_end, repl_start, repl_end, wh_phrase, kind)`` in sentence ``s``: the answer span, the
    region the wh-phrase replaces (the answer plus a preposition or article) and the phrase."""
    out = []
    for m in _DATE.finditer(s):
        pre = re.search(r"\b(?:on|in)\s+$", s[: m.start()], re.IGNORECASE)
        out.append((m.start(), m.end(), pre.start() if pre else m.start(), m.end(), "when", "date"))
    for m in _AMOUNT.finditer(s):
        wh = "what percentage" if re.search(r"%|cent$", m.group()) else "how much"
        out.append((m.start(), m.end(), m.start(), m.end(), wh, "amount"))
    for m in _COUNT.finditer(s):
        if _YEAR.fullmatch(m.group(1)):  # "the 2005 series"
            continue
        out.append((m.start(1), m.end(1), m.start(1), m.end(1), "how many", "count"))
    for m in _YEAR.finditer(s):
        pre = _YEAR_BEFORE.search(s[: m.start()])
        if pre is None and not re.match(r"\s*(?:[,;:.)]|$)", s[m.end() :]):
            continue
        decade = m.group().endswith("s")
        wh = "what decade" if decade else "what year"
        if pre and pre.group().strip().lower() == "in":
            out.append((m.start(), m.end(), pre.start(), m.end(), f"in {wh}", "year"))
        else:
            out.append((m.start(), m.end(), m.start(), m.end(), wh, "year"))
    for m in _NAME.finditer(s):
        a, b, span = m.start(), m.end(), m.group()
        while span and (re.search(r"(?:[a-z]{2}\.|[-'’]|['’]s)$", span) or span.split()[-1] in _CONNECT):
            span = (
                span[:-2]
                if re.search(r"['’]s$", span)
                else span[:-1]
                if span[-1] in ".-'’"
                else span.rsplit(None, 1)[0].rstrip()
            )
        b = a + len(span)
        words = span.split()
        if a == 0 or not words or span in _NOT_NAMES | _DAYS or re.fullmatch(_MONTH, span) or len(span) < 3:
            continue
        if s[:a].rstrip().endswith((".", ":", '"', "“", "(")) or re.match(r"\s*\d", s[b:]):
            continue  # a quotation, a sentence part or a parenthesis starts here; a model name ("Apollo 1")
        place, role = _PLACE_BEFORE.search(s[:a]), _ROLE.search(s[:a])
        if role:  # "the engineer Thomas Stevenson" -> "which engineer"
            kind = "person" if _PERSON_ROLE.fullmatch(role.group(1)) else "name"
            out.append((a, b, role.start(), b, f"which {role.group(1)}", kind))
        elif place:
            out.append((a, b, place.start(), b, "where", "place"))
        elif re.search(r"\bby\s+$", s[:a]) and not _ORG_WORDS & set(words):
            out.append((a, b, a, b, "whom", "person"))
        elif (
            2 <= len(words) <= 3
            and all(w[:1].isupper() for w in words)
            and not _ORG_WORDS & set(words)
            and not re.search(r"\bthe\s+$", s[:a])
            and _PERSON_NEXT.match(s[b:])
        ):
            out.append((a, b, a, b, "who", "person"))
        else:
            the = re.search(r"\bthe\s+$", s[:a])
            out.append((a, b, the.start() if the else a, b, "what", "name"))
    return out


def _render(s: str, ra: int, rb: int, wh: str) -> str:
    """``s`` with ``s[ra:rb]`` replaced by ``wh``; a fronted phrase ("In 1834 the mill ...", "On March 4,
    1921, a storm ...") moves to the end ("The mill ... in what year?")."""
    head, tail = s[:ra].rstrip(), s[rb:].lstrip()
    tail = tail.rstrip().rstrip(".!?;:,\"'”").rstrip()
    if not head and tail and (tail.startswith(",") or " " in wh):
        tail = tail.lstrip(", ")
        q = f"{tail[:1].upper()}{tail[1:]} {wh}"
    else:
        q = f"{head} {wh} {tail}"
    q = " ".join(q.split()).rstrip(" ,;:")
    q = re.sub(r"([(\[])\s+", r"\1", re.sub(r"\s+([,;:)\]])", r"\1", q))
    return q[:1].upper() + q[1:] + "?"


def chunk_questions(text: str, chunk_id: int) -> list[GeneratedQuestion]:
    """Every question the rules make from ``text``, in reading order (overlapping spans: the first kind in
    :data:`KINDS` wins); sentences with fewer than 5 words of letters give none."""
    out = []
    for sa, sb in sentences(text):
        s = text[sa:sb]
        if (
            len(_ALPHA_WORD.findall(s)) < 5
            or len(s.split()) > 40
            or not s[0].isupper()
            or (sb == len(text.rstrip()) and not re.search(r"[.!?][\"')\]”]*$", s))
        ):
            continue  # too short or long, or cut by the chunk boundary
        taken: list[tuple[int, int]] = []
        for a, b, ra, rb, wh, kind in sorted(_candidates(s), key=lambda c: (KINDS.index(c[5]), c[0])):
            answer = s[a:b]
            if any(a < tb and ta < b for ta, tb in taken) or s.lower().count(answer.lower()) != 1:
                continue
            taken.append((a, b))
            question = _render(s, ra, rb, wh)
            if len(question.split()) < 4:
                continue
            out.append(GeneratedQuestion(question, answer, chunk_id, s, kind, sa + a, sa + b))
    return sorted(out, key=lambda q: q.start)


def generate_questions(
    chunks: Iterable[ChunkLike], *, seed: int = 0, per_chunk: int = 2, limit: int | None = None
) -> list[GeneratedQuestion]:
    """Up to ``per_chunk`` questions per chunk (of different kinds where possible), shuffled, at most
    ``limit``; the same chunks and ``seed`` give the same list."""
    rng = random.Random(seed)
    picked: list[GeneratedQuestion] = []
    for c in chunks:
        qs = chunk_questions(c.text, c.chunk_id)
        rng.shuffle(qs)
        firsts = list({q.kind: q for q in reversed(qs)}.values())[::-1]  # the first question of each kind,
        firsts.sort(key=lambda q: q.kind == "name")  # names (the most common) last
        picked.extend((firsts + [q for q in qs if q not in firsts])[:per_chunk])
    rng.shuffle(picked)
    return picked[:limit] if limit is not None else picked


def kinds_of(questions: Sequence[GeneratedQuestion]) -> dict[str, int]:
    """How many questions of each kind (for logs and reports)."""
    return {k: n for k in KINDS if (n := sum(q.kind == k for q in questions))}
