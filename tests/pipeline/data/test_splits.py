"""Content-hash split assignment."""

import collections
import hashlib

import pytest

from pipeline.data import splits


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_assignment_is_a_pure_function_of_the_hash():
    assert [splits.assign_split(_sha(i)) for i in range(50)] == [
        splits.assign_split(_sha(i)) for i in range(50)
    ]


def test_fractions_are_respected_roughly():
    counts = collections.Counter(splits.assign_split(_sha(i)) for i in range(20_000))
    assert set(counts) == set(splits.SPLITS)
    assert abs(counts["train"] / 20_000 - 0.8) < 0.02
    assert abs(counts["test"] / 20_000 - 0.1) < 0.02


def test_zero_fraction_split_is_empty():
    counts = collections.Counter(
        splits.assign_split(_sha(i), (0.5, 0.0, 0.5)) for i in range(2_000)
    )
    assert counts["validation"] == 0 and counts["train"] > 0 and counts["test"] > 0


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.9, 0.2, -0.1), (0.5, 0.3, 0.3)])
def test_bad_fractions_raise(fractions):
    with pytest.raises(ValueError):
        splits.assign_split(_sha(0), fractions)
