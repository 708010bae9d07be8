"""Does a served configuration hold its profile? `autotune bench --profile` runs the profile's level and judges it
against the profile's own runs with the run-to-run spread measured on fresh servers: one run of a deployment is
one draw, so a figure a few percent off its profile's mean is noise, not a regression
(docs/results/h200-profile-check.md: five bench runs on fresh servers lay -3.7% to +2.7% from their profiles).

Throughput: the mean of the new runs (m) against the profile's mean of n, with the spread of a difference of two
means (``sigma * sqrt(1/m + 1/n)``), sigma the profile's runs' own standard deviation, never below the real GPU's
run-to-run floor. Each limited P99: the runs' pooled interval as a study's load level judges it (the requests'
bootstrap, never narrower than the GPU's run-to-run spread of that P99 over m runs), against the limit. A P99
within noise of its limit is measured again, as a study's level is (`bench --max-runs`).

A P99 at or over its limit at the profile's load is what a knee gives: the profile's concurrency is the highest load
its study found within the limits. Where the profile has a serve load (profile.ServeLoad), the check names it: the
load at which a deployment's P99s stay within the limits in most runs. It judges nothing there.

At the serve load (`bench --profile --serve-load`) the same rules judge a deployment that serves there: each P99
against its limit, and the throughput against what the serve load expects (derived from the winner's load curve, not
measured at that load) with the profile's own run-to-run spread, relative to its mean, scaled to it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import yaml
from pydantic import ValidationError

from autotune.config import REAL_GPU_NOISE_FLOOR, REAL_GPU_P99_RUN_CV
from autotune.errors import UsageError
from autotune.loadsearch import p99_limit_sides
from autotune.metrics import BenchResult
from autotune.profile import Profile, ThroughputStats, read_profile
from autotune.records import ServeLoadRecord
from autotune.winner import describe_serve

__all__ = ["ProfileCheck", "P99Check", "load_profile_for_check", "check_against_profile", "expected_tok_s"]


@dataclass(frozen=True)
class P99Check:
    metric: str
    p99_ms: float
    low_ms: float  # the run's interval at the profile's confidence
    high_ms: float
    limit_ms: float
    within: bool | None  # None: its interval straddles the limit (at the limit, within noise)
    profile_values_ms: tuple[float | None, ...]  # the profile's runs at this load
    # the profile's own mean P99 at this load is over the limit (its winner met the limits below this load, where
    # its throughput at the limit lies: the profile's note says to serve below it); over the limit is as profiled
    profile_over_limit: bool = False
    expected_ms: float | None = None  # at the serve load: the P99 the profile expects there (none was measured)

    @property
    def over_unprofiled(self) -> bool:
        """Over its limit beyond noise where the profile's own runs were not."""
        return self.within is False and not self.profile_over_limit


@dataclass(frozen=True)
class ProfileCheck:
    concurrency: int
    runs: int  # of the level, pooled
    output_tok_s: float
    profile_mean_tok_s: float
    profile_runs: int
    expected_low_tok_s: float  # where the mean of ``runs`` more runs of the profiled configuration lies
    expected_high_tok_s: float
    confidence: float
    p99: tuple[P99Check, ...]
    serve: ServeLoadRecord | None = None  # the profile's serve load, where it has one
    profile_at_limit_tok_s: float = math.nan  # the profile's throughput at the limit, which the serve load costs
    # the level is the profile's serve load: profile_mean_tok_s is what it expects there, derived, not measured
    at_serve_load: bool = False

    @property
    def serve_advised(self) -> ServeLoadRecord | None:
        """The profile's serve load where a P99 here is within noise of its limit or over it and the serve load lies
        below the profile's: a deployment that must hold the limits in most runs serves there."""
        if self.serve is None or self.serve.concurrency >= self.concurrency:
            return None
        return self.serve if any(p.within is not True for p in self.p99) else None

    @property
    def change_pct(self) -> float:
        if not self.profile_mean_tok_s > 0:  # a hand-edited profile: no ratio to it
            return math.nan
        return 100.0 * (self.output_tok_s / self.profile_mean_tok_s - 1.0)

    @property
    def slower(self) -> bool:
        """Below what one more run of the profiled configuration gives, beyond noise (or no throughput measured:
        a run without a steady window)."""
        return math.isnan(self.output_tok_s) or self.output_tok_s < self.expected_low_tok_s

    @property
    def holds(self) -> bool | None:
        """Neither slower beyond noise nor a P99 over its limit beyond noise where the profile's was not (False where
        one is); None where neither is but a P99 lies within noise of its limit: the runs do not settle that."""
        if self.slower or any(c.over_unprofiled for c in self.p99):
            return False
        return None if any(c.within is None for c in self.p99) else True

    def lines(self) -> list[str]:
        """The check in plain lines: the throughput, each limit, the conclusion."""
        c = f"{self.confidence:.0%}"
        against = "expected" if self.at_serve_load else "profiled"
        side = ("no throughput measured" if math.isnan(self.output_tok_s)
                else f"below it: slower than {against}, beyond noise" if self.slower
                else f"above it: faster than {against}" if self.output_tok_s > self.expected_high_tok_s
                else f"as {against}, within noise")
        runs = "one run" if self.runs == 1 else f"the mean of {self.runs} runs"
        change = "" if math.isnan(self.change_pct) else f"{self.change_pct:+.1f}% from "
        if self.at_serve_load:
            out = [f"against the profile's serve load, concurrency {self.concurrency}: {self.output_tok_s:,.0f} "
                   f"output tok/s ({runs}), {change}the {self.profile_mean_tok_s:,.0f} it expects there (derived "
                   f"from its load curve and its n={self.profile_runs} runs at its concurrency); {runs} lies in "
                   f"[{self.expected_low_tok_s:,.0f}, {self.expected_high_tok_s:,.0f}] ({c}): {side}"]
        else:
            out = [f"against the profile at concurrency {self.concurrency}: {self.output_tok_s:,.0f} output tok/s "
                   f"({runs}), {change}its mean {self.profile_mean_tok_s:,.0f} "
                   f"(n={self.profile_runs}); {runs} of it lies in "
                   f"[{self.expected_low_tok_s:,.0f}, {self.expected_high_tok_s:,.0f}] ({c}): {side}"]
        for p in self.p99:
            verdict = {True: "holds", False: "over it, beyond noise", None: "at the limit, within noise"}[p.within]
            if p.within is False and p.profile_over_limit:
                verdict += ", as the profile's own runs were at this load (its note: serve below it)"
            if p.expected_ms is not None:
                profiled = f"the profile expects {p.expected_ms:,.0f} ms there"
            else:
                values = ", ".join("n/a" if v is None else f"{v:,.0f}" for v in p.profile_values_ms)
                profiled = f"the profile's runs: {values} ms"
            out.append(f"  P99 {p.metric} {p.p99_ms:,.0f} ms [{p.low_ms:,.0f}, {p.high_ms:,.0f}] against its limit "
                       f"{p.limit_ms:g} ms: {verdict} ({profiled})")
        what = "its profile's serve load" if self.at_serve_load else "its profile"
        out.append({True: f"the deployment holds {what}", False: f"the deployment does NOT hold {what}",
                    None: f"not settled by {runs}: a P99 lies within noise of its limit"}[self.holds])
        if (serve := self.serve_advised) is not None:
            out.append(f"the profile's concurrency {self.concurrency} is its knee, where a P99 lies near its limit: a "
                       f"deployment that must hold the limits in most runs should "
                       f"{describe_serve(serve, self.concurrency, self.profile_at_limit_tok_s)} (check a deployment "
                       f"there: add --serve-load)")
        return out

    def to_json(self) -> dict:
        serve = self.serve_advised
        return {"concurrency": self.concurrency, "runs": self.runs, "output_tok_s": self.output_tok_s,
                "profile_mean_tok_s": self.profile_mean_tok_s, "profile_runs": self.profile_runs,
                "change_pct": self.change_pct, "expected_tok_s": [self.expected_low_tok_s, self.expected_high_tok_s],
                "confidence": self.confidence, "slower": self.slower, "holds": self.holds,
                "at_serve_load": self.at_serve_load,
                "p99": [{"metric": p.metric, "p99_ms": p.p99_ms, "interval_ms": [p.low_ms, p.high_ms],
                         "limit_ms": p.limit_ms, "within": p.within, "profile_values_ms": list(p.profile_values_ms),
                         "profile_over_limit": p.profile_over_limit, "expected_ms": p.expected_ms}
                        for p in self.p99],
                "serve_concurrency": serve.concurrency if serve else None,
                "serve_output_tok_s": serve.output_tok_s if serve else None}


def load_profile_for_check(path: str) -> Profile:
    """A profile `autotune run` wrote; anything else is a one-line usage error."""
    try:
        return read_profile(Path(path))
    except OSError as e:
        raise UsageError(f"--profile {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:  # a binary file: the study's database, say, given for its profile
        raise UsageError(f"--profile {path}: not a text file (a profile is YAML)") from None
    except yaml.YAMLError as e:
        raise UsageError(f"--profile {path}: not YAML ({str(e).splitlines()[0]})") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise UsageError(f"--profile {path}: not a profile `autotune run` wrote ({where}: {first['msg']})") from None


def check_against_profile(profile: Profile, result: BenchResult, runs: int = 1,
                          at_serve_load: bool = False) -> ProfileCheck:
    """``result``: ``runs`` closed-loop runs pooled (metrics.pool) at the profile's concurrency and workload (bench
    --profile), or at its serve load (``at_serve_load``; the profile must have one): their throughput is the runs'
    mean, weighted by their windows."""
    tput = profile.metrics.output_tok_s
    confidence = tput.confidence
    low, high = expected_tok_s(tput, runs)
    limits_ms = profile.objective.limits_ms
    sides = p99_limit_sides(result, limits_ms, confidence, REAL_GPU_P99_RUN_CV, runs)
    serve = ServeLoadRecord.from_json(profile.serve.model_dump()) if profile.serve else None
    profiled = profile.metrics.p99
    if at_serve_load:
        if serve is None:
            raise ValueError("the profile has no serve load")
        # the serve load's throughput is the profile's mean carried along its curve: its spread scales with it
        scale = serve.output_tok_s / tput.mean if tput.mean > 0 else math.nan
        p99 = tuple(P99Check(metric, iv.value, iv.low, iv.high, limits_ms[metric], within, (),
                             expected_ms=serve.p99_ms.get(metric))
                    for metric, (iv, within) in sides.items())
        return ProfileCheck(concurrency=serve.concurrency, runs=runs, output_tok_s=result.output_tok_s,
                            profile_mean_tok_s=serve.output_tok_s, profile_runs=tput.n,
                            expected_low_tok_s=low * scale, expected_high_tok_s=high * scale, confidence=confidence,
                            p99=p99, serve=serve, profile_at_limit_tok_s=profile.metrics.output_tok_s_at_limit.mean,
                            at_serve_load=True)
    p99 = tuple(P99Check(metric, iv.value, iv.low, iv.high, limits_ms[metric], within,
                         tuple(profiled[metric].values_ms) if metric in profiled else (),
                         metric in profiled and (profiled[metric].mean_ms or 0.0) > limits_ms[metric])
                for metric, (iv, within) in sides.items())
    return ProfileCheck(concurrency=profile.concurrency, runs=runs, output_tok_s=result.output_tok_s,
                        profile_mean_tok_s=tput.mean, profile_runs=tput.n, expected_low_tok_s=low,
                        expected_high_tok_s=high, confidence=confidence, p99=p99, serve=serve,
                        profile_at_limit_tok_s=profile.metrics.output_tok_s_at_limit.mean)


def expected_tok_s(tput: ThroughputStats, runs: int = 1) -> tuple[float, float]:
    """Where the mean of ``runs`` more runs of the profiled configuration lies, at the profile's confidence: its
    mean, with the spread of a difference of two means (the module says which sigma)."""
    z = NormalDist().inv_cdf(0.5 + tput.confidence / 2)
    sigma = max(tput.std if tput.n >= 2 and not math.isnan(tput.std) else 0.0, REAL_GPU_NOISE_FLOOR * tput.mean)
    half = z * sigma * math.sqrt(1.0 / runs + 1.0 / max(tput.n, 1))
    return tput.mean - half, tput.mean + half
