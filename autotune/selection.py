"""Winner selection: every finalist measured the same way, a gain stated with its confidence interval, and
"equal within noise" when that is the truth.

The finalists (the top trials and both baselines) are re-measured ``repeats`` times each on fresh servers, with
the same step-down rule. Only finalists measured that way are ranked: one cut short by the deadline is named
*unconfirmed* and no claim rests on it. A gain over a baseline comes with Welch's t interval for the difference
of the two means (the repeats are few, their spread unknown: Student's t, not the normal, sets the width); on
real GPUs the interval is never narrower than the noise floor, the run-to-run spread between fresh servers that
two or three repeats cannot estimate. Finalists whose throughput the best one does not beat beyond its interval
are equal within noise; of those, the one with the fewest flags changed from vLLM's defaults is recommended.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from autotune.flags import changed_flags
from autotune.records import GainRecord, Measurement, Remeasurement

__all__ = ["Candidate", "Selection", "select_winner", "gain_over", "flags_changed"]


@dataclass
class Candidate:
    trial_number: int
    flags: dict[str, Any]
    concurrency: int | None
    search_output_tok_s: float  # from the load search (one measurement)
    search_p99_ms: Mapping[str, float]  # each limited metric's P99, by metric
    baseline: str = ""  # "", vllm-defaults, seed-profile
    vllm_serve_cmd: str = ""
    repeats: list[Measurement] = field(default_factory=list)
    # The trial's other feasible load levels below ``concurrency``, highest first: (concurrency, tok/s, P99s).
    # A re-measurement over a limit steps down to the next one (the knee was marginal).
    lower_levels: list[tuple[int, float, Mapping[str, float]]] = field(default_factory=list)
    stepped_down_from: list[int] = field(default_factory=list)
    remeasure_s: float = 0.0  # expected wall seconds of one re-measurement (server start and stop, one level)

    def step_down(self, min_bisect_ratio: float = 1.2) -> bool:
        """Move below a level whose re-measurement broke a limit: to the geometric midpoint between it and the
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
            self.search_output_tok_s, self.search_p99_ms = math.nan, {m: math.nan for m in self.search_p99_ms}
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

    def stats(self, noise_floor: float = 0.0, confidence: float = 0.9) -> dict[str, float]:
        """Output tok/s over the measurements: mean, std, min, max, n, and the half width of the mean's t interval
        (never below ``noise_floor`` x mean)."""
        tput = np.array([m.output_tok_s for m in self._measured()], dtype=float)
        if tput.size == 0:
            return {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "n": 0, "half_width": 0.0}
        mean = float(tput.mean())
        std = float(tput.std(ddof=1)) if tput.size > 1 else 0.0
        t_half = float(scipy_stats.t.ppf(0.5 + confidence / 2, tput.size - 1)) * std / math.sqrt(tput.size) \
            if tput.size > 1 else 0.0
        return {"mean": mean, "std": std, "min": float(tput.min()), "max": float(tput.max()), "n": int(tput.size),
                "half_width": max(t_half, noise_floor * mean)}

    def p99_values_ms(self, metric: str) -> list[float]:
        """The P99s of ``metric`` over the measurements that ``stats`` counts (NaN where one was not measured)."""
        return [m.p99_ms.get(metric, math.nan) for m in self._measured()]

    def p99_mean_ms(self, metric: str) -> float:
        """The mean P99 of ``metric`` over the measurements (NaN when none has one)."""
        values = [v for v in self.p99_values_ms(metric) if not math.isnan(v)]
        return float(np.mean(values)) if values else math.nan

    def _measured(self) -> list[Measurement]:
        """The measurements with a throughput (a server that did not start has none)."""
        return [m for m in self.measurements() if not math.isnan(m.output_tok_s)]

    def confirmed(self, repeats: int) -> bool:
        """Measured as every finalist must be: ``repeats`` fresh-server measurements at its final load (with
        ``repeats`` 0: the search's own figure)."""
        return self.concurrency is not None and (len(self.repeats) >= repeats if repeats > 0 else True)

    def meets(self, limits_ms: Mapping[str, float]) -> bool:
        """Throughput measured, and every limit met by its metric's mean P99 over the measurements."""
        s = self.stats()
        return s["n"] > 0 and s["mean"] > 0 and all(
            self.p99_mean_ms(metric) <= limit for metric, limit in limits_ms.items())


@dataclass
class Selection:
    winner: Candidate | None  # the recommended configuration
    candidates: list[Candidate]
    gains: dict[str, GainRecord]  # the winner's over each baseline, by baseline name
    verdict: str  # one sentence for people
    equal_within_noise: list[int] = field(default_factory=list)  # trials the winner does not beat beyond noise
    unconfirmed: list[int] = field(default_factory=list)  # finalists not measured like the others (no claim)


def flags_changed(flags: dict[str, Any]) -> int:
    """How many of ``flags`` differ from vLLM's defaults."""
    return len(changed_flags(flags))


def gain_over(winner: Candidate, baseline: Candidate, limits_ms: Mapping[str, float], noise_floor: float,
              confidence: float = 0.9) -> GainRecord:
    """The winner's gain over ``baseline`` with Welch's t interval for the difference of their means (a baseline
    that misses a limit counts as 0 tok/s). Significant when the whole interval lies above 0."""
    w, b = winner.stats(noise_floor, confidence), baseline.stats(noise_floor, confidence)
    meets = baseline.meets(limits_ms)
    b_mean = b["mean"] if meets else 0.0
    diff = w["mean"] - b_mean
    var_w = w["std"] ** 2 / w["n"] if w["n"] > 1 else 0.0
    var_b = (b["std"] ** 2 / b["n"] if b["n"] > 1 else 0.0) if meets else 0.0
    if var_w + var_b > 0:
        dof = (var_w + var_b) ** 2 / sum(v ** 2 / (s["n"] - 1) for v, s in ((var_w, w), (var_b, b)) if v > 0)
        half = float(scipy_stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(var_w + var_b)
    else:
        half = 0.0
    half = max(half, noise_floor * max(b_mean, w["mean"]))
    pct = (lambda x: x / b_mean * 100.0) if b_mean > 0 else (lambda x: math.inf)
    return GainRecord(baseline_trial=baseline.trial_number, baseline_output_tok_s=b_mean, baseline_meets_limit=meets,
                      gain_output_tok_s=diff, gain_pct=pct(diff), gain_pct_low=pct(diff - half),
                      gain_pct_high=pct(diff + half), confidence=confidence, significant=diff - half > 0)


def select_winner(candidates: list[Candidate], limits_ms: Mapping[str, float], repeats: int,
                  noise_floor: float = 0.0, confidence: float = 0.9) -> Selection:
    unconfirmed = [c for c in candidates if c.concurrency is not None and not c.confirmed(repeats)]
    confirmed = [c for c in candidates if c.confirmed(repeats) and c.meets(limits_ms)]
    names = ", ".join(_name(c) for c in unconfirmed)
    if not confirmed:
        meeting = [c for c in unconfirmed if c.meets(limits_ms)]
        if not meeting:
            return Selection(None, candidates, {}, "no configuration met the limits in re-measurement",
                             unconfirmed=[c.trial_number for c in unconfirmed])
        best = max(meeting, key=lambda c: c.stats()["mean"])
        return Selection(best, candidates, {}, f"no finalist was measured as the others: {names} unconfirmed "
                                               f"(fewer than {repeats} re-measurements); {_name(best)} is the best "
                                               "figure seen, with no claim over the others",
                         unconfirmed=[c.trial_number for c in unconfirmed])
    best = max(confirmed, key=lambda c: c.stats()["mean"])
    # Finalists the best one does not beat beyond noise are its equals; the simplest of them is recommended.
    equals = [c for c in confirmed
              if c is best or not gain_over(best, c, limits_ms, noise_floor, confidence).significant]
    winner = min(equals, key=lambda c: (flags_changed(c.flags), -c.stats()["mean"]))
    gains = {c.baseline: gain_over(winner, c, limits_ms, noise_floor, confidence)
             for c in candidates if c.baseline and c is not winner and c.confirmed(repeats)}
    if len(equals) > 1:
        verdict = (f"equal within noise: {', '.join(_name(c) for c in equals)}; recommended: {_name(winner)}, "
                   f"the fewest flags changed from vLLM's defaults ({flags_changed(winner.flags)})")
    elif len(confirmed) == 1:
        verdict = f"{_name(winner)} is the only configuration that met the limit as measured: nothing to compare"
    elif winner.baseline:
        verdict = f"the baseline '{winner.baseline}' is the best configuration found, beyond noise"
    elif gains and all(g.significant for g in gains.values()):
        verdict = "the tuned configuration beats every baseline beyond noise"
    elif gains:
        weak = ", ".join(k for k, g in gains.items() if not g.significant)
        verdict = f"the tuned configuration is not better than {weak} beyond noise"
    else:
        verdict = "no baseline was measured as the finalists were"
    if unconfirmed:
        verdict += f"; unconfirmed (cut short, no claim rests on them): {names}"
    return Selection(winner, candidates, gains, verdict, [c.trial_number for c in equals if len(equals) > 1],
                     [c.trial_number for c in unconfirmed])


def _name(c: Candidate) -> str:
    return f"trial {c.trial_number}" + (f" ({c.baseline})" if c.baseline else "")
