"""What a resumed study may change: budgets and search settings yes, what a measurement means no."""

from __future__ import annotations

import pytest

from latts.core.spec import SpecError, StudySpec, parse_spec
from tests.conftest import SMALL_STUDY


def stored(**changes) -> dict:
    """A spec as storage keeps it (defaults filled, JSON types)."""
    return parse_spec({**SMALL_STUDY, **changes}).model_dump(mode="json")


def test_budgets_statistic_and_search_settings_may_change():
    current = parse_spec({**SMALL_STUDY, "budgets_s": [0.2, 9.0], "latency_statistic": "p90", "n_trials": 3, "sampler": "tpe"})
    current.check_resumable(stored())


@pytest.mark.parametrize(
    "field, value",
    [
        ("sampling", {"temperature": 0.6, "max_tokens": 96}),
        ("benchmark", {"name": "arith", "n_problems": 7, "seed": 3}),
        ("engine", {"kv_cache_gib": 2}),
        ("seed", 1),
        ("aggregation", {"window": 8}),
    ],
)
def test_what_a_measurement_means_may_not_change(field, value):
    with pytest.raises(SpecError, match=f"different {field}"):
        parse_spec({**SMALL_STUDY, field: value}).check_resumable(stored())


def test_a_field_added_with_a_default_does_not_block_an_old_study():
    old = stored()
    del old["aggregation"], old["concurrency"], old["engine"]["enforce_eager"]  # as an older release stored it
    parse_spec(SMALL_STUDY).check_resumable(old)


def test_an_unreadable_stored_spec_is_one_line():
    with pytest.raises(SpecError, match="cannot read") as err:
        parse_spec(SMALL_STUDY).check_resumable({**stored(), "colour": "blue"})
    assert "\n" not in str(err.value)


def test_measurement_fields_are_spec_fields():
    assert set(StudySpec.MEASUREMENT_FIELDS) <= set(StudySpec.model_fields)


def test_relative_budgets_move_with_their_reference_and_absolute_ones_stay():
    spec = parse_spec({**SMALL_STUDY, "budgets_s": ["1.5x", 0.5, "10x"]})
    assert spec.resolve_budgets(0.42) == [0.5, 0.63, 4.2]
    ranges = spec.budget_ranges(0.42, (0.392, 0.464))
    assert ranges[0.5] == (0.5, 0.5)
    assert ranges[0.63] == (pytest.approx(0.588), pytest.approx(0.696))
    assert ranges[4.2] == (pytest.approx(3.92), pytest.approx(4.64))
    # A relative budget that resolves onto an absolute one spans what both allow.
    assert spec.budget_ranges(1 / 3, (0.3, 0.4))[0.5] == (pytest.approx(0.45), pytest.approx(0.6))
