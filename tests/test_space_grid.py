"""The exhaustive grid of a finite search space (what benchmarks/tuning_cost.py evaluates point by point)."""
from __future__ import annotations

import math

from autotune.models import PRESETS
from autotune.space import load_space


def test_flash_grid_is_the_product_of_the_active_choices() -> None:
    model = PRESETS["flash"]
    space = load_space(None, model, 1, preset="flash")
    active = [s for s in space.params.values() if space.conditions_hold(s.when, model, 1, 1)]
    points = space.grid(model, 1)
    assert len(points) == math.prod(len(s.domain_values()) for s in active) * max(1, len(space.tp_choices))
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    # every point is a complete set of Optuna params: enqueueing it reproduces it
    for point in (points[0], points[len(points) // 2], points[-1]):
        assert space.params_for({**space.fixed, **point}, model, 1) == point
