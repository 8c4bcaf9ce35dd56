"""A small Okapi BM25 ranker over component descriptions (the retrieval baseline).

Written here rather than pulled from a package: it is ~40 lines, has no
dependencies, and the composer only needs a ranking of a few hundred short
descriptions against one task text.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an and are as at be by for from in into is it of on or that the this to with "
                  "we you your our can will which who what when how".split())


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric words without English stop words, light plural folding."""
    words = []
    for w in _WORD.findall(text.lower()):
        if w in _STOP:
            continue
        if len(w) > 4 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        words.append(w)
    return words


class BM25:
    """Okapi BM25 over a fixed corpus.

    Args:
        documents: the texts to rank.
        k1: term-frequency saturation.
        b: length normalisation.
    """

    def __init__(self, documents: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self.docs = [Counter(tokenize(d)) for d in documents]
        self.lengths = [sum(c.values()) for c in self.docs]
        self.avg_len = (sum(self.lengths) / len(self.lengths)) if self.docs else 0.0
        df: Counter[str] = Counter()
        for c in self.docs:
            df.update(c.keys())
        n = len(self.docs)
        # The "+1" inside the log keeps idf positive for very common terms.
        self.idf = {t: math.log(1.0 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def scores(self, query: str) -> list[float]:
        """BM25 score of every document for ``query``."""
        terms = tokenize(query)
        out = []
        for doc, length in zip(self.docs, self.lengths, strict=True):
            s = 0.0
            norm = self.k1 * (1 - self.b + self.b * length / self.avg_len) if self.avg_len else self.k1
            for t in terms:
                tf = doc.get(t, 0)
                if tf:
                    s += self.idf[t] * tf * (self.k1 + 1) / (tf + norm)
            out.append(s)
        return out

    def rank(self, query: str) -> list[int]:
        """Document indices, best first (ties keep corpus order)."""
        sc = self.scores(query)
        return sorted(range(len(sc)), key=lambda i: (-sc[i], i))
