"""Sample-keyed random numbers: pure functions of (key, salt, column), in range, spread."""

from __future__ import annotations

import pytest
import torch

from densessl.ops.keyed_random import keyed_bits, keyed_randint, keyed_uniform


def test_numbers_depend_only_on_key_salt_and_column():
    keys = torch.tensor([0, 1, 2**62 - 1, -5, 123456789012345])
    whole = keyed_bits(keys, salt=3, count=7)
    parts = torch.cat([keyed_bits(keys[i : i + 1], salt=3, count=7) for i in range(5)])
    assert torch.equal(whole, parts)  # no dependence on the rest of the batch
    assert torch.equal(whole[:, :4], keyed_bits(keys, salt=3, count=4))
    assert not torch.equal(whole, keyed_bits(keys, salt=4, count=7))
    assert whole.min() >= 0 and whole.max() < 2**32


def test_ranges_and_rough_uniformity():
    keys = torch.arange(4000)
    ints = keyed_randint(keys, 0, 4, 1)
    counts = torch.bincount(ints.flatten(), minlength=4)
    assert counts.min() > 900 and counts.max() < 1100
    u = keyed_uniform(keys, 1, 3)
    assert u.dtype == torch.float32 and u.min() >= 0 and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 0.02
    with pytest.raises(ValueError, match="keys"):
        keyed_bits(keys.reshape(2, -1), 0, 1)
