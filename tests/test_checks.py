"""The one validator: message shape "fn: argument 'x' must ..., got ..." for pairs and numbers."""

import math

import pytest
import torch

from morphreg._checks import check_number, check_pair


@pytest.mark.parametrize(
    ("kwargs", "value", "message"),
    [
        ({"minimum": 0, "exclusive_minimum": True}, 0.0, r"^f: argument 'x' must be a positive finite number, got 0.0$"),
        ({"minimum": 0}, -1, r"^f: argument 'x' must be a finite number >= 0, got -1$"),
        ({"minimum": 0}, math.inf, r"must be a finite number >= 0, got inf"),
        ({}, math.nan, r"must be a finite number, got nan"),
        ({"minimum": 0, "maximum": 1}, 1.5, r"must be a finite number in \[0, 1\], got 1.5"),
        ({"maximum": 2}, 3, r"must be a finite number <= 2, got 3"),
        ({}, True, r"must be a finite number, got True"),
        ({}, "1", r"must be a finite number, got '1'"),
    ],
)
def test_check_number_refuses(kwargs, value, message):
    with pytest.raises(ValueError, match=message):
        check_number("f", "x", value, **kwargs)


def test_check_number_accepts_and_returns_a_float():
    assert check_number("f", "x", 3, minimum=0, exclusive_minimum=True) == 3.0
    assert isinstance(check_number("f", "x", 3), float)
    assert check_number("f", "x", 0, minimum=0) == 0.0


@pytest.mark.parametrize(
    ("a", "b", "match", "message"),
    [
        (torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4, 4), "grid", r"f: 'moving' has 2 spatial dims but 'fixed' has 3"),
        (torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5), "grid", r"must have the same channels and spatial shape"),
        (torch.rand(1, 2, 4, 4), torch.rand(1, 1, 6, 6), "channels", r"must have the same number of channels, got 2 and 1"),
        (torch.rand(2, 1, 4, 4), torch.rand(3, 1, 4, 4), "grid", r"batch sizes of 'moving' \(2\) and 'fixed' \(3\)"),
        (torch.rand(2, 1, 4, 4), torch.rand(1, 1, 4, 4), "shape", r"arguments 'moving' and 'fixed' must have the same shape"),
        ("x", torch.rand(1, 1, 4, 4), "grid", r"argument 'moving' must be a torch.Tensor"),
        (torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, 4, dtype=torch.long), "grid", r"argument 'fixed' must be a floating"),
    ],
)
def test_check_pair_refuses(a, b, match, message):
    with pytest.raises((ValueError, TypeError), match=message):
        check_pair("f", a, b, match=match)


def test_check_pair_accepts_what_each_match_allows():
    assert check_pair("f", torch.rand(1, 1, 4, 4), torch.rand(3, 1, 4, 4)) == 2  # batch 1 broadcasts
    assert check_pair("f", torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 6, 5, 4), match="channels") == 3
    with pytest.raises(ValueError, match="argument 'a' must have 2 channel"):
        check_pair("f", torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), names=("a", "b"), channels=2)
