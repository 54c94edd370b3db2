"""The RPS mask written for every interface (the steering itself is exercised by every kernel test's fabric)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.net.steering import cpu_mask


def test_masks_cover_every_cpu_in_groups_of_32_bits():
    assert [cpu_mask(n) for n in (1, 2, 4, 32, 33, 64)] == ["1", "3", "f", "ffffffff", "1,ffffffff",
                                                            "ffffffff,ffffffff"]


@given(st.integers(min_value=1, max_value=4096))
def test_a_mask_read_back_as_the_kernel_does_names_exactly_the_cpus(cpus):
    groups = cpu_mask(cpus).split(",")
    assert int("".join(g.rjust(8, "0") for g in groups), 16) == (1 << cpus) - 1
    assert len(groups) == (cpus + 31) // 32


def test_no_cpus_is_refused():
    with pytest.raises(ValueError, match="cpus must be at least 1"):
        cpu_mask(0)
