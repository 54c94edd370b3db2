"""24-bit PSN arithmetic: wrap-around at 2**24 and ordering across the wrap."""

import pytest

from testbed.roce import psn

TOP = 2**24 - 1


def test_add_and_next_wrap_at_2_pow_24():
    assert psn.next_psn(TOP) == 0
    assert psn.next_psn(41) == 42
    assert psn.add(TOP - 2, 5) == 2
    assert psn.add(3, -5) == TOP - 1
    assert psn.add(7, 2**24) == 7  # a whole turn is the identity
    assert psn.add(0, -1) == TOP


@pytest.mark.parametrize(("a", "b", "expected"), [
    (10, 3, 7),
    (3, 10, -7),
    (2, TOP - 1, 4),  # across the wrap, a is 4 after b
    (TOP - 1, 2, -4),
    (5, 5, 0),
    (2**23 - 1, 0, 2**23 - 1),  # the farthest "after"
    (2**23, 0, -(2**23)),  # exactly half apart reads as "before"
])
def test_diff_is_the_signed_distance_within_half_the_space(a, b, expected):
    assert psn.diff(a, b) == expected


def test_before_and_after_across_the_wrap():
    assert psn.before(TOP, 0) and psn.after(0, TOP)
    assert psn.before(TOP - 100, 50) and not psn.after(TOP - 100, 50)
    assert not psn.before(7, 7) and not psn.after(7, 7)
    # more than half the space ahead means behind
    assert psn.before(2**23 + 1, 0) and psn.after(0, 2**23 + 1)


def test_every_step_of_a_window_straddling_the_wrap_is_after_the_previous_one():
    start = TOP - 1000
    current = start
    for step in range(1, 3000):
        following = psn.next_psn(current)
        assert psn.after(following, current) and psn.diff(following, start) == step
        current = following
    assert current == 1998


@pytest.mark.parametrize("bad", [-1, 2**24, 2**30])
def test_out_of_range_psn_is_rejected(bad):
    with pytest.raises(ValueError, match=r"PSN must be in \[0, 2\*\*24\)"):
        psn.add(bad, 1)
    with pytest.raises(ValueError, match="PSN"):
        psn.diff(0, bad)
