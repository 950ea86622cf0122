"""The budget rules of ``offline_tools.experiments.budgets``."""

from __future__ import annotations

import pytest

from offline_tools.experiments.budgets import fig6_budgets, load_budget, load_margins, lut_level, monotone

ALONE = {1: 1.0, 2: 1.5, 3: 2.0, 4: 3.0}


def test_fig6_budgets_make_the_lut_pick_each_target() -> None:
    b6 = fig6_budgets(ALONE, 1.1)
    assert b6["tight"][1] == 1 and b6["medium"][1] == 3 and b6["loose"][1] == 4
    for budget, lvl in b6.values():
        assert lut_level(ALONE, budget) == lvl


def test_load_budget_maximises_the_gap() -> None:
    loaded = {1: 3.0, 2: 3.6, 3: 4.4, 4: 6.0}
    rule = load_budget(ALONE, loaded, 1.1)
    assert rule["budget_ms"] == pytest.approx(3.3)
    assert rule["static_safe"] == 1 and rule["static_alone"] == 4 and rule["load_effect"] == "slows"
    assert rule["candidates"]["1.1"][0] == {"budget_ms": 3.3, "static_safe": 1, "static_alone": 4}


def test_load_budget_without_a_gap_and_with_a_narrower_margin() -> None:
    none = load_budget(ALONE, ALONE, (1.1, 1.05))
    assert none["load_effect"] == "none" and set(none["candidates"]) == {"1.1", "1.05"}
    # a constant added delay: no gap with a wide margin, one with a narrower margin
    added = {lvl: ms + 4.0 for lvl, ms in ALONE.items()}
    assert load_budget(ALONE, added, 1.5)["load_effect"] == "none"
    narrow = load_budget(ALONE, added, (1.5, 1.05))
    assert narrow["margin"] == 1.05 and narrow["static_safe"] < narrow["static_alone"]
    with pytest.raises(ValueError, match="at least one margin"):
        load_budget(ALONE, added, ())


def test_small_rules() -> None:
    assert monotone({1: 2.0, 2: 1.9, 3: 3.0})[2] > 2.0
    assert lut_level(ALONE, 0.1) == 1
    assert load_margins(1.25) == (1.25, 1.15, 1.05)
    assert load_margins(1.1) == (1.1, 1.05)
