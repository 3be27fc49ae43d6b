"""Category and brand for catalogs that have none (Online Retail has only a description).

Both are learned from the titles themselves, not from a list of products:

* **category** is the head noun, the product type ("... T-LIGHT HOLDER" -> HOLDER). Titles are
  cut at counts and measures ("REGENCY CAKESTAND 3 TIER" -> REGENCY CAKESTAND), at a
  prepositional tail ("MUG IN BOX" -> MUG) and after a quantity prefix ("PACK OF 12 ..."); the
  head is then the last word that is not a modifier. A modifier is a word that appears with
  many different last words but is rarely last itself (colours, sizes, designs, materials), or
  one that is last mostly right after another product noun ("BOX RETROSPOT DESIGN").
* **brand** stands for the design line, which in gift retail plays the part of a brand: a
  modifier spanning several categories ("RETROSPOT" bags, mugs and umbrellas) that is neither
  a noun used in compounds ("WALL" clock, "KEY" ring, "PHOTO" frame: few distinct words
  follow it), nor a variant attribute (colours and sizes: most of their titles have a sibling that
  differs in that one word), nor a countable noun (seen in the plural: CARDS, TINS), nor a
  count or unit word ("SET", "PACK", "3 TIER").

Plain heuristics, documented as derived in the README, and replaced by real columns whenever a
catalog file provides them.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict

_TOKEN = re.compile(r"[A-Z0-9][A-Z0-9'\-]*")
# English function words (grammar, not products): a tail starting with one of SPLIT does not
# hold the head ("MUG IN BOX"); "X OF ..." is a quantity prefix ("PACK OF 12 ...").
FUNCTION = {"OF", "IN", "WITH", "W", "FOR", "AND", "THE", "ON", "TO", "A", "AN", "OR", "BY"}
SPLIT = {"IN", "WITH", "W", "FOR", "ON", "BY"}
COUNT, MEASURE = "#", "~"
MIN_SPREAD = 5  # a modifier appears with at least this many different heads
MIN_QUANTIFIER = 5  # a count word precedes a number or OF in at least this many titles
MIN_BRAND_CATEGORIES = 3
# A noun used in compounds goes with a few words (WALL clock/art, KEY ring/fob, PHOTO frame);
# a design line with anything: distinct next words (or the title's end) per title.
MIN_BRAND_FOLLOWERS = 0.3
MAX_BRAND_VARIANT = 0.35  # share of titles with a sibling differing only in this word
VARIANT_SAMPLE = 200_000


def _tokens(title: str, vocab: set[str] | None = None) -> list[str]:
    words = [w.strip("'-") for w in _TOKEN.findall((title or "").upper().replace("/", " "))]
    out = []
    for w in words:
        if not w:
            continue
        if w.isdigit():
            out.append(COUNT)
        elif any(c.isdigit() for c in w):
            out.append(MEASURE)
        else:
            out.append(_singular(w, vocab) if vocab is not None else w)
    return out


def _singular(word: str, vocab: set[str]) -> str:
    if len(word) > 3 and word.endswith("IES") and word[:-3] + "Y" in vocab:
        return word[:-3] + "Y"
    if len(word) > 4 and word.endswith("XES") and word[:-2] in vocab:
        return word[:-2]
    if len(word) > 3 and word.endswith("S") and not word.endswith("SS") and word[:-1] in vocab:
        return word[:-1]
    return word


def _segments(words: list[str], quantifiers: set[str]) -> list[list[str]]:
    """Runs of content words between counts, measures, prepositions and quantity words."""
    segs: list[list[str]] = [[]]
    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else None
        if w in (COUNT, MEASURE) or w in SPLIT or w == "OF":
            segs.append([])
        elif w in FUNCTION:
            continue
        elif w in quantifiers and nxt in (COUNT, "OF"):
            segs.append([])
        else:
            segs[-1].append(w)
    return [s for s in segs if s]


def _head(segs: list[list[str]], modifiers: set[str], spread: dict[str, int], nouns: set[str]) -> str | None:
    for seg in segs:
        content = [w for w in seg if w not in modifiers]
        if content:
            return content[-1]
    if not segs:
        return None
    # Every word modifies something: the last countable noun ("REGENCY CAKE TINS" -> TIN),
    # else the most specific word (fewest heads).
    counted = [w for w in segs[0] if w in nouns]
    return counted[-1] if counted else min(reversed(segs[0]), key=lambda w: spread.get(w, 0))


def derive(titles: list[str | None]) -> tuple[list[str | None], list[str | None]]:
    raw = [_tokens(t or "") for t in titles]
    vocab = {w for ws in raw for w in ws}
    tokenized = [[_singular(w, vocab) if w not in (COUNT, MEASURE) else w for w in ws] for ws in raw]

    before_count = Counter(a for ws in tokenized for a, b in zip(ws, ws[1:])
                           if b in (COUNT, "OF") and a not in (COUNT, MEASURE) and a not in FUNCTION)
    quantifiers = {w for w, c in before_count.items() if c >= MIN_QUANTIFIER}
    segments = [_segments(ws, quantifiers) for ws in tokenized]
    # Countable nouns (CARDS, TINS, EGGS) name things; a design line is never plural.
    plurals = Counter(s for r, t in zip(raw, tokenized) for w, s in set(zip(r, t)) if w != s)
    nouns = {w for w, k in plurals.items() if k >= 2}

    # Modifiers, from where each word stands relative to the titles' last words: one that
    # comes before many different last words more often than it is a last word itself.
    last = [segs[0][-1] if segs else None for segs in segments]
    n_last = Counter(last)
    before: dict[str, set] = defaultdict(set)
    for segs, end in zip(segments, last):
        for w in {w for seg in segs for w in seg}:
            if w != end:
                before[w].add(end)
    spread = {w: len(ends) for w, ends in before.items()}
    modifiers = {w for w, s in spread.items() if s >= MIN_SPREAD and s >= n_last.get(w, 0)}
    heads = [_head(segs, modifiers, spread, nouns) for segs in segments]
    # A word that is mostly last only after another product noun ("SEWING BOX RETROSPOT
    # DESIGN") describes that noun: it modifies too.
    n_head = Counter(heads)
    trailing = Counter()
    for segs, head in zip(segments, heads):
        seg = next((seg for seg in segs if head in seg), [])
        if head in seg and any(n_last.get(w, 0) >= 3 and w not in modifiers for w in seg[:seg.index(head)]):
            trailing[head] += 1
    modifiers |= {w for w, k in trailing.items() if k > n_head[w] / 2 and n_head[w] >= MIN_SPREAD}
    heads = [_head(segs, modifiers, spread, nouns) for segs in segments]
    categories = heads
    brands = _brands(tokenized, segments, categories, (modifiers | quantifiers) - nouns, quantifiers)
    return categories, brands


def _brands(tokenized, segments, categories, modifiers: set[str], quantifiers: set[str]) -> list[str | None]:
    n = Counter()
    cats: dict[str, set] = defaultdict(set)
    followers: dict[str, set] = defaultdict(set)
    for segs, cat in zip(segments, categories):
        flat = [w for seg in segs for w in seg]
        for w in set(flat):
            n[w] += 1
            cats[w].add(cat)
        for a, b in zip(flat, flat[1:] + [None]):
            followers[a].add(b)
    # Variant attributes: a title has a sibling identical but for this word (RED/BLUE, SMALL/LARGE).
    # (Keyed by hash and measured on at most VARIANT_SAMPLE titles: memory stays bounded.)
    fillers: dict[int, set] = defaultdict(set)
    step = max(1, len(tokenized) // VARIANT_SAMPLE)
    for ws in tokenized[::step]:
        for j, w in enumerate(ws):
            fillers[hash((tuple(ws[:j]), tuple(ws[j + 1:])))].add(w)
    n_sampled = Counter(w for ws in tokenized[::step] for w in set(ws))
    # Unit words come after a count ("3 TIER", "11 PC").
    after_count = Counter(b for ws in tokenized for a, b in zip(ws, ws[1:]) if a == COUNT)
    variant = Counter()
    for fill in fillers.values():
        if len(fill) > 1:
            for w in fill:
                variant[w] += 1
    types = categories_set(categories)
    lines = {
        w for w in modifiers
        if w not in quantifiers and w not in FUNCTION
        and len(cats[w] - {None}) >= MIN_BRAND_CATEGORIES
        and len(followers[w]) >= MIN_BRAND_FOLLOWERS * n[w]
        and variant[w] < MAX_BRAND_VARIANT * n_sampled[w]
        and w not in types
        and 2 * after_count[w] < n[w]
    }
    brands: list[str | None] = []
    for segs, cat in zip(segments, categories):
        found = [w for seg in segs for w in seg if w in lines and w != cat]
        # the title's most specific design line (the rarest word; broad themes lose)
        brands.append(min(found, key=lambda w: (n[w], w)) if found else None)
    return brands


def categories_set(categories: list[str | None]) -> set[str]:
    """Words that are the product type of at least three items name types, not lines."""
    counts = Counter(c for c in categories if c)
    return {c for c, k in counts.items() if k >= 3}
