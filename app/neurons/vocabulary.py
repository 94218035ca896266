"""Word lists drawn from open_clip's bundled BPE vocabulary (no download).

The BPE merges file is in frequency order, so the whole-word entries (``...</w>``) read in order
are the most frequent words first. The words stage renders the first ``10,000`` of them; the demo
world writes later ones (a disjoint range) as distractor words.
"""

from __future__ import annotations

import gzip
from functools import lru_cache

DEFAULT_VOCAB_SIZE = 10_000


@lru_cache(maxsize=4)
def _whole_words(limit: int) -> tuple[str, ...]:
    from open_clip.tokenizer import default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:]
    words: dict[str, None] = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2:
            continue
        token = parts[0] + parts[1]
        if not token.endswith("</w>"):
            continue
        word = token[: -len("</w>")]
        if len(word) >= 3 and word.isascii() and word.isalpha():
            words.setdefault(word)
            if len(words) >= limit:
                break
    return tuple(words)


def bpe_words(limit: int = DEFAULT_VOCAB_SIZE, start: int = 0) -> list[str]:
    """Alphabetic whole-word BPE entries of at least 3 letters, by frequency rank ``[start, limit)``."""
    return list(_whole_words(limit)[start:])
