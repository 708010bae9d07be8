"""Winner selection: re-measure the top candidates and the baselines, pick the winner with its spread,
and state its gain over each baseline only where the gain exceeds the noise."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotune.records import GainRecord, Measurement, Remeasurement

__all__ = ["Candidate", "Selection", "select_winner", "gain_over"]


@dataclass
class Candidate:
    trial_number: int
    flags: dict[str, Any]
    concurrency: int | None
    search_output_tok_s: float  # from the load search (one measurement)
    search_p99_ms: float
    baseline: str = ""  # "", vllm-defaults, seed-profile
    vllm_serve_cmd: str = ""
    repeats: list[Measurement] = field(default_factory=list)
    # The trial's other feasible load levels below ``concurrency``, highest first: (concurrency, tok/s, P99).
    # A re-measurement over the limit steps down to the next one (the knee was marginal).
    lower_levels: list[tuple[int, float, float]] = field(default_factory=list)
    stepped_down_from: list[int] = field(default_factory=list)
    remeasure_s: float = 0.0  # expected wall seconds of one re-measurement (server start and stop, one level)

    def step_down(self, min_bisect_ratio: float = 1.2) -> bool:
        """Move below a level whose re-measurement broke the limit: to the geometric midpoint between it and the
        next lower feasible level when that lies ``min_bisect_ratio`` or more below (the search's own bisection
        rule; only from a searched level, so a failed midpoint costs one server start), else to that level."""
        if self.concurrency is None:
            return False
        below = self.lower_levels[0][0] if self.lower_levels else 0
        searched = not math.isnan(self.search_output_tok_s)
        if searched and below and self.concurrency / below >= min_bisect_ratio and self.concurrency - below > 1:
            self.move_to(min(max(int(round(math.sqrt(self.concurrency * below))), below + 1), self.concurrency - 1))
        elif below:
            self.move_to(below)
        else:
            return False
        return True

    def move_to(self, concurrency: int) -> None:
        """Re-measure at a lower concurrency from now on, dropping the re-measurements made at this one. A
        searched level brings its search figures; a midpoint has none."""
        self.stepped_down_from.append(int(self.concurrency))
        while self.lower_levels and self.lower_levels[0][0] > concurrency:
            self.lower_levels.pop(0)
        if self.lower_levels and self.lower_levels[0][0] == concurrency:
            _, self.search_output_tok_s, self.search_p99_ms = self.lower_levels.pop(0)
        else:
            self.search_output_tok_s = self.search_p99_ms = math.nan
        self.concurrency = concurrency
        self.repeats = []

    def remeasurement(self) -> Remeasurement:
        """What the study stores of this candidate's re-measurements."""
        assert self.concurrency is not None
        return Remeasurement(self.trial_number, self.concurrency, tuple(self.stepped_down_from), tuple(self.repeats))

    def measurements(self) -> list[Measurement]:
        """Re-measurements when there are any, else the search's own figure."""
        if self.repeats:
            return self.repeats
        if self.concurrency is None:
            return []
        return [Measurement(self.search_output_tok_s, self.search_p99_ms)]

    def stats(self, noise_floor: float = 0.0) -> dict[str, float]:
        ms = self.measurements()
        tput = np.array([m.output_tok_s for m in ms], dtype=float)
        p99 = np.array([m.p99_ms for m in ms], dtype=float)
        if tput.size == 0 or np.isnan(tput).all():
            return {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "n": 0, "spread": 0.0,
                    "p99_mean_ms": math.nan, "p99_max_ms": math.nan}
        mean = float(np.nanmean(tput))
        std = float(np.nanstd(tput, ddof=1)) if tput.size > 1 else 0.0
        return {"mean": mean, "std": std, "min": float(np.nanmin(tput)), "max": float(np.nanmax(tput)),
                "n": int(tput.size), "spread": max(std, noise_floor * mean),
                "p99_mean_ms": float(np.nanmean(p99)), "p99_max_ms": float(np.nanmax(p99))}

    def meets(self, limit_ms: float) -> bool:
        s = self.stats()
        return s["n"] > 0 and s["mean"] > 0 and not math.isnan(s["p99_mean_ms"]) and s["p99_mean_ms"] <= limit_ms


@dataclass
class Selection:
    winner: Candidate | None
    candidates: list[Candidate]
    gains: dict[str, GainRecord]  # by baseline name
    verdict: str  # one sentence for people


def gain_over(winner: Candidate, baseline: Candidate, limit_ms: float, noise_floor: float) -> GainRecord:
    w, b = winner.stats(noise_floor), baseline.stats(noise_floor)
    b_mean = b["mean"] if baseline.meets(limit_ms) else 0.0
    diff = w["mean"] - b_mean
    spread = w["spread"] + (b["spread"] if b_mean > 0 else 0.0)
    return GainRecord(baseline_trial=baseline.trial_number, baseline_output_tok_s=b_mean,
                      baseline_meets_limit=baseline.meets(limit_ms), gain_output_tok_s=diff,
                      gain_pct=(w["mean"] / b_mean - 1.0) * 100.0 if b_mean > 0 else math.inf,
                      spread_output_tok_s=spread, significant=diff > spread)


def select_winner(candidates: list[Candidate], limit_ms: float, noise_floor: float = 0.0) -> Selection:
    meeting = [c for c in candidates if c.meets(limit_ms)]
    if not meeting:
        return Selection(None, candidates, {}, "no configuration met the limit in re-measurement")
    winner = max(meeting, key=lambda c: c.stats()["mean"])
    gains = {c.baseline: gain_over(winner, c, limit_ms, noise_floor)
             for c in candidates if c.baseline and c is not winner}
    if winner.baseline:
        verdict = f"the baseline '{winner.baseline}' is already the best configuration found"
    elif gains and all(g.significant for g in gains.values()):
        verdict = "the tuned configuration beats every baseline beyond the measurement spread"
    elif gains:
        weak = ", ".join(k for k, g in gains.items() if not g.significant)
        verdict = f"the tuned configuration is not better than {weak} beyond the spread: treat them as equal"
    else:
        verdict = "no baseline was measured"
    return Selection(winner, candidates, gains, verdict)
