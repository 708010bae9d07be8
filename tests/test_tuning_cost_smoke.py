"""Smoke test of benchmarks/tuning_cost.py: the objective of a few grid points, and the grid's size."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tuning_cost():
    spec = importlib.util.spec_from_file_location("tuning_cost_bench", REPO / "benchmarks" / "tuning_cost.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_grid_size_is_the_product_of_the_choices(tuning_cost) -> None:
    setup = tuning_cost.make_setup()
    active = [s for s in setup.space.params.values() if setup.space.conditions_hold(s.when, setup.model, 1)]
    points = tuning_cost.grid_flags(setup)
    assert len(points) == math.prod(len(s.domain_values()) for s in active) * len(setup.space.tp_choices)
    assert len({tuning_cost.point_key(p) for p in points}) == len(points)
    assert all(setup.space.fixed.items() <= p.items() for p in points)


def test_objective_on_three_grid_points_is_finite(tuning_cost) -> None:
    setup = tuning_cost.make_setup()
    points = tuning_cost.grid_flags(setup)
    for flags in (points[0], points[len(points) // 2], points[-1]):
        rec = tuning_cost.evaluate(setup, flags)
        assert math.isfinite(rec["output_tok_s"]) and rec["output_tok_s"] >= 0
        assert math.isfinite(rec["constraint_ms"])
        assert rec["feasible"] == (rec["constraint_ms"] <= 0)
        if rec["feasible"]:
            assert rec["output_tok_s"] > 0 and rec["concurrency"] >= 1
