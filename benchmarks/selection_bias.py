"""How often does the verdict claim a gain that is not there, when the winner is the best of several finalists?

Each simulated study has K finalists: the two baselines (vLLM's defaults, the seed profile) and K - 2 tuned
trials, each measured RUNS times (its trial's run and its fresh-server re-measurements) with lognormal run-to-run
noise of CV --cv, and judged by autotune's own verdict (`autotune.selection.select_winner`, the GPU's 3% noise
floor). With every finalist truly equal, any gain claimed over a baseline is false; with one tuned finalist truly
--true-gain better, a claim over both baselines is the power to see it. Prints, per setup, the rate of studies
with a false gain line, with a false verdict sentence ("beats every baseline beyond noise" or "the baseline ... is
the best configuration found, beyond noise"), and the rate of claimed true gains, each with its 95%
Clopper-Pearson interval.

    python benchmarks/selection_bias.py                      # K = 3, 4, 5, 6; RUNS = 2, 3; 4,000 studies each
    python benchmarks/selection_bias.py --studies 1000 --finalists 5 --runs 2
    python benchmarks/selection_bias.py --one-pair-at-a-time # the verdict before: Student's t for every pair
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.special import stdtrit
from scipy.stats import beta

from autotune import selection
from autotune.records import Measurement
from autotune.selection import Candidate, select_winner

LIMITS_MS = {"ttft": 500.0}
BASELINES = ("vllm-defaults", "seed-profile")


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    low = beta.ppf(0.025, k, n - k + 1) if k else 0.0
    high = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return float(low), float(high)


def one_study(rng: np.random.Generator, finalists: int, runs: int, cv: float, true_gain: float,
              noise_floor: float) -> tuple[bool, bool, bool]:
    """(a gain line claims a false gain, the verdict sentence claims a false gain, a true gain was claimed over
    both baselines)."""
    sigma = float(np.sqrt(np.log1p(cv ** 2)))
    candidates, truth = [], {}
    for i in range(finalists):
        baseline = BASELINES[i] if i < len(BASELINES) else ""
        true_tok_s = 3000.0 * (1.0 + true_gain if i == finalists - 1 and not baseline else 1.0)
        values = true_tok_s * rng.lognormal(-sigma ** 2 / 2, sigma, runs)
        flags = {} if baseline == "vllm-defaults" else {"max-num-seqs": 100 + i, "kv-cache-dtype": "fp8"}
        c = Candidate(i, flags, 64, float(values[0]), {"ttft": 300.0}, baseline=baseline)
        c.repeats = [Measurement(float(v), {"ttft": 300.0}) for v in values[1:]]
        c.search_level = (64, float(values[0]), {"ttft": 300.0})  # the trial's own run counts as the first
        candidates.append(c)
        truth[i] = true_tok_s
    sel = select_winner(candidates, LIMITS_MS, repeats=runs - 1, noise_floor=noise_floor)
    assert sel.winner is not None
    won = truth[sel.winner.trial_number]
    false_lines = [g for g in sel.gains.values() if g.significant and won <= truth[g.baseline_trial]]
    true_lines = [g for g in sel.gains.values() if g.significant and won > truth[g.baseline_trial]]
    beyond = "beats every baseline beyond noise" in sel.verdict or "best configuration found, beyond noise" in sel.verdict
    false_verdict = beyond and any(won <= truth[g.baseline_trial] for g in sel.gains.values())
    return bool(false_lines), false_verdict, len(true_lines) == len(BASELINES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4000)
    parser.add_argument("--finalists", type=int, nargs="+", default=[3, 4, 5, 6])
    parser.add_argument("--runs", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--cv", type=float, default=0.05, help="run-to-run CV of throughput at the limit")
    parser.add_argument("--true-gain", type=float, default=0.10, help="the better tuned finalist's true gain")
    parser.add_argument("--noise-floor", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one-pair-at-a-time", action="store_true",
                        help="judge each gain with Student's t as if its pair alone had been compared (the verdict "
                             "before its intervals were joint over the finalists)")
    args = parser.parse_args()
    if args.one_pair_at_a_time:
        selection.critical_value = lambda finalists, dof, confidence: float(stdtrit(dof, 0.5 + confidence / 2))
    rule = "one pair at a time (Student's t)" if args.one_pair_at_a_time else "joint over the finalists"
    print(f"intervals {rule}; CV {args.cv:.0%}, noise floor {args.noise_floor:.0%}, {args.studies} studies per setup; "
          "rates with 95% Clopper-Pearson intervals")
    print("| finalists | runs each | false gain line, all equal | false verdict, all equal "
          f"| gain over both baselines seen, one +{args.true_gain:.0%} |")
    print("|---|---|---|---|---|")
    t0 = time.perf_counter()
    for finalists in args.finalists:
        for runs in args.runs:
            rng = np.random.default_rng([args.seed, finalists, runs])
            null = [one_study(rng, finalists, runs, args.cv, 0.0, args.noise_floor) for _ in range(args.studies)]
            alt = [one_study(rng, finalists, runs, args.cv, args.true_gain, args.noise_floor)
                   for _ in range(args.studies)]
            cells = []
            for k in (sum(s[0] for s in null), sum(s[1] for s in null), sum(s[2] for s in alt)):
                low, high = clopper_pearson(k, args.studies)
                cells.append(f"{k / args.studies:.1%} [{low:.1%}, {high:.1%}]")
            print(f"| {finalists} | {runs} | " + " | ".join(cells) + " |")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
