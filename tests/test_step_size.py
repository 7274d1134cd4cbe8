"""The dt heuristic: its formula, its scaling with the energy's frequency, and argument checks.

The gradient-ratio check it exists for (T = 1000) is in test_gradients.py.
"""

from __future__ import annotations

import pytest

from hrnn.step_size import GROWTH_CONSTANT, GROWTH_EXPONENT, STABLE_FRACTION, heuristic_dt, resolve_dt


@pytest.mark.parametrize("seq_len", [100, 1000, 10_000])
def test_heuristic_follows_the_three_quarter_power_law(seq_len):
    assert heuristic_dt(seq_len) == pytest.approx(GROWTH_CONSTANT * seq_len**-GROWTH_EXPONENT)
    assert heuristic_dt(10 * seq_len) == pytest.approx(heuristic_dt(seq_len) * 10**-0.75)


def test_heuristic_is_capped_below_the_stability_limit_for_short_sequences():
    assert heuristic_dt(1) == STABLE_FRACTION < 2.0
    assert heuristic_dt(18) == STABLE_FRACTION
    assert heuristic_dt(20) < STABLE_FRACTION


def test_heuristic_scales_inversely_with_the_energy_frequency():
    # Only h * omega enters the linearised step, so doubling omega halves dt.
    for seq_len in (5, 300, 3000):
        assert heuristic_dt(seq_len, max_frequency=2.0) == pytest.approx(heuristic_dt(seq_len) / 2)


def test_heuristic_decreases_with_sequence_length():
    values = [heuristic_dt(t) for t in (10, 100, 300, 1000, 3000, 10_000)]
    assert values == sorted(values, reverse=True)


def test_resolve_dt_passes_numbers_through_and_applies_auto():
    assert resolve_dt(0.25, None, 3.0) == 0.25
    assert resolve_dt(0.25, 1000, 3.0) == 0.25
    assert resolve_dt("auto", 1000, 3.0) == heuristic_dt(1000, 3.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: heuristic_dt(0), "seq_len must be a positive int"),
        (lambda: heuristic_dt(100.0), "seq_len must be a positive int"),
        (lambda: heuristic_dt(100, max_frequency=0.0), "max_frequency"),
        (lambda: resolve_dt("auto", None, 1.0), "needs seq_len"),
        (lambda: resolve_dt("fast", 100, 1.0), "positive number or 'auto'"),
    ],
)
def test_bad_arguments_fail_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call()
