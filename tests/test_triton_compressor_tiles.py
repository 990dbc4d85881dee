"""triton_compressor's fallback to smaller tiles where a GPU's shared memory is too small for the configured ones
(no GPU needed: the launch is a stub that raises triton's own OutOfResources for the tiles that "do not fit")."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("triton")
from triton.runtime.errors import OutOfResources  # noqa: E402

from blossom_hf.models.blossomrec import triton_compressor as tc  # noqa: E402


def test_too_large_tiles_fall_back_to_the_first_that_fits_once_and_say_so(monkeypatch, caplog):
    monkeypatch.setattr(tc, "_FITTING", {})
    first = (64, 256, 64, 8)
    fits = tc.SMALLER_TILES[1]
    tried = []

    def run(rows, cols, k, warps):
        tried.append((rows, cols, k, warps))
        if cols > fits[1]:
            raise OutOfResources(264192, 232448, "shared memory")

    with caplog.at_level(logging.WARNING, logger=tc.__name__):
        tc._with_fitting_tiles("forward", ("cuda:0", "bf16"), first, run)
    assert tried == [first, tc.SMALLER_TILES[0], fits]
    assert len(caplog.records) == 2 and "do not fit this GPU" in caplog.records[0].getMessage()
    caplog.clear()
    tried.clear()
    with caplog.at_level(logging.WARNING, logger=tc.__name__):
        tc._with_fitting_tiles("forward", ("cuda:0", "bf16"), first, run)
    assert tried == [fits] and not caplog.records, "the tiles that fit are remembered: one launch, no warning"
    tried.clear()
    tc._with_fitting_tiles("forward", ("cuda:1", "bf16"), first, run)  # another device starts from the configured
    assert tried[0] == first


def test_when_no_tiles_fit_the_error_is_raised(monkeypatch):
    monkeypatch.setattr(tc, "_FITTING", {})

    def run(*tiles):
        raise OutOfResources(1, 0, "shared memory")

    with pytest.raises(OutOfResources):
        tc._with_fitting_tiles("backward", ("cuda:0",), (64, 128, 64, 8), run)


def test_other_errors_are_not_swallowed(monkeypatch):
    monkeypatch.setattr(tc, "_FITTING", {})
    calls = []

    def run(*tiles):
        calls.append(tiles)
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):
        tc._with_fitting_tiles("forward", ("cuda:0",), (64, 256, 64, 8), run)
    assert len(calls) == 1
