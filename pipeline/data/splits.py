"""Split assignment from a content hash, so that adding images never moves an existing one.

An image's split depends on its own bytes only: exact duplicates share a split, and a
rebuild with more images leaves every earlier image where it was.
"""

import hashlib

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
_BUCKETS = 10_000


def validate_fractions(fractions: tuple[float, ...]) -> tuple[float, float, float]:
    """Checks that there is one non-negative fraction per split and that they sum to 1."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions} (sum {sum(fractions)})")
    return tuple(fractions)


def assign_split(sha256_hex: str, fractions: tuple[float, ...] = DEFAULT_FRACTIONS) -> str:
    """The split of an image whose content hash is `sha256_hex`.

    The hash is hashed again with a fixed salt so that the split does not correlate with
    anything else keyed on the content hash (e.g. a shard or a sample).
    """
    fractions = validate_fractions(fractions)
    digest = hashlib.sha256(b"happysad-split:" + sha256_hex.encode("ascii")).digest()
    bucket = int.from_bytes(digest[:8], "big") % _BUCKETS
    threshold = 0.0
    for split, fraction in zip(SPLITS, fractions, strict=True):
        threshold += fraction * _BUCKETS
        if bucket < round(threshold):
            return split
    return SPLITS[-1]
