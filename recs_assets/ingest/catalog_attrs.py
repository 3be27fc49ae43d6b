"""Category and brand for catalogs that have none (Online Retail has only a description).

Category is the product type: the last meaningful word of the title ("... T-LIGHT HOLDER" ->
HOLDER). Brand stands for the design line, which in gift retail plays the part of a brand: a
title word that spans many product types ("RETROSPOT" bags, mugs and umbrellas). Both are
plain heuristics, documented as derived in the README, and replaced by real columns whenever a
catalog file provides them.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict

_WORD = re.compile(r"[A-Z][A-Z'\-]{2,}")
STOP = {
    "SET", "OF", "AND", "THE", "WITH", "FOR", "IN", "ON", "PACK", "BOX", "ASSORTED", "SMALL", "LARGE",
    "MINI", "JUMBO", "MEDIUM", "BIG", "TINY", "DESIGN", "COLOUR", "COLOURS", "COL", "NEW", "HANGING",
    "RED", "WHITE", "BLUE", "PINK", "GREEN", "BLACK", "IVORY", "CREAM", "SILVER", "GOLD", "PURPLE",
    "YELLOW", "ORANGE", "BROWN", "GREY", "CLEAR", "NATURAL", "PASTEL", "GLASS", "METAL", "WOODEN",
    "WOOD", "ZINC", "CERAMIC", "PAPER", "FELT", "HEART", "HEARTS", "STAR", "FLOWER", "SWEETHEART",
    "VINTAGE", "RETRO", "FAIRY", "PARTY", "CHRISTMAS", "DOORMAT", "LOVE", "DECORATION", "PAINTED",
    "TRADITIONAL", "ENAMEL", "TEA", "CAKE", "LIGHT", "TWO", "THREE", "SIX", "TWELVE", "BIRD", "SPOT",
}
MIN_CATEGORIES_FOR_BRAND = 6


def _words(title: str) -> list[str]:
    return [w.strip("'-") for w in _WORD.findall((title or "").upper())]


def _singular(word: str, vocab: set[str]) -> str:
    return word[:-1] if word.endswith("S") and word[:-1] in vocab else word


def derive(titles: list[str | None]) -> tuple[list[str | None], list[str | None]]:
    tokenized = [_words(t or "") for t in titles]
    vocab = {w for ws in tokenized for w in ws}
    tokenized = [[_singular(w, vocab) for w in ws] for ws in tokenized]
    categories: list[str | None] = []
    for words in tokenized:
        content = [w for w in words if w not in STOP]
        categories.append((content or words or [None])[-1])
    spans: dict[str, set[str]] = defaultdict(set)
    for words, cat in zip(tokenized, categories):
        for w in set(words):
            if w != cat and w not in STOP:
                spans[w].add(cat)
    is_line = {w for w, cats in spans.items() if len(cats) >= MIN_CATEGORIES_FOR_BRAND}
    # A word that is itself a common category (BAG, MUG) names a product type, not a line.
    cat_counts = Counter(categories)
    is_line = {w for w in is_line if cat_counts.get(w, 0) < 3}
    # A design word at the end of a title ("JUMBO BAG RED RETROSPOT") is not the product type.
    for i, words in enumerate(tokenized):
        content = [w for w in words if w not in STOP and w not in is_line]
        if content:
            categories[i] = content[-1]
    brands: list[str | None] = []
    for words, cat in zip(tokenized, categories):
        lines = [w for w in words if w in is_line and w != cat]
        brands.append(max(lines, key=lambda w: (len(spans[w]), w)) if lines else None)
    return categories, brands
