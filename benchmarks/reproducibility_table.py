"""Does the same study, run twice side by side on two cards, reach the same verdict? (issue #16, item 5)

Reads the folder `benchmarks/gpu/reproducibility.sh` writes (per copy g: `gpu<g>.json`, the `autotune run
--json` report; `gpu<g>.db`, its storage; `t0`/`t1`, the wall clock of both) and prints per copy: trials run
(baselines and searched), whether the final comparison was complete (no finalist unconfirmed), the verdict, the
winner's flags and throughput at the limit, and GPU-minutes; then whether the pair agrees: the same winner
(the same flags) or "equal within noise" over the same set of configurations, and the winners' throughputs at
the limit within 5%.

    python benchmarks/reproducibility_table.py DIR [--reselect] [--json]

``--reselect`` also judges each copy's stored trials and re-measurements by today's selection rules
(``autotune.study``'s candidates, ``autotune.selection.select_winner``), so a pair recorded under older rules can
be read under the current ones. A study recorded before re-measurements at loads stepped down from were kept
gets them rebuilt from their request records (``gpu<g>/<study>/remeasure/<trial>-c<C>-<i>/levels/``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import optuna
from _shared import load_records, window_tok_s

from autotune import records
from autotune.config import REAL_GPU_NOISE_FLOOR
from autotune.records import Measurement, Remeasurement
from autotune.selection import select_winner
from autotune.study import stored_finalists

AGREEMENT = 0.05  # the winners' throughputs at the limit within 5% of each other


def copy_summary(folder: Path, g: int) -> dict:
    report = json.loads((folder / f"gpu{g}.json").read_text())
    storage = f"sqlite:///{folder / f'gpu{g}.db'}"
    name = optuna.get_all_study_names(storage)[0]
    study = optuna.load_study(study_name=name, storage=storage)
    trials = records.read_trials(study)
    selection = records.read_selection(study)
    flags_of = {t.number: t.result.flags for t in trials if t.result is not None}
    best = report.get("best") or {}
    runs = records.read_runs(study)
    wall_min = sum(r.wall_s * r.gpus for r in runs) / 60.0
    return {
        "copy": g, "study": name, "stopped_by": report.get("stopped_by"),
        "baselines_run": sum(1 for t in trials if t.complete and t.baseline),
        "searched_run": sum(1 for t in trials if t.complete and not t.baseline),
        "unconfirmed": list(selection.unconfirmed) if selection else None,
        "verdict": report.get("verdict"), "winner_flags": best.get("flags"),
        "winner_at_limit_tok_s": best.get("output_tok_s_at_limit"),
        "winner_concurrency": best.get("concurrency"),
        "equal_within_noise_flags": sorted(json.dumps(flags_of[n], sort_keys=True)
                                           for n in (selection.equal_within_noise if selection else ())),
        "gpu_minutes": wall_min,  # the copy's own `autotune run` wall time x its GPUs
        # every candidate of the final comparison has a re-measurement record (one cut short included)
        "finalists_compared": len(records.read_remeasurements(study)) if selection else 0,
    }


def _rebuilt_earlier(folder: Path, study: optuna.Study, stored: Remeasurement,
                     limits_ms: dict[str, float]) -> tuple[tuple[int, Measurement], ...]:
    """The re-measurements at the loads ``stored`` stepped down from, from their request records."""
    earlier = []
    for c in stored.stepped_down_from:
        paths = sorted(folder.glob(f"gpu*/{study.study_name}/remeasure/{stored.trial_number}-c{c}-*/levels/*.jsonl.gz"))
        for path in paths:
            rows = load_records(path)
            ok = [r for r in rows if not r["warmup"] and r["ok"]]
            p99 = {m: float(np.percentile([r[f"{m}_ms"] for r in ok], 99)) for m in limits_ms}
            earlier.append((c, Measurement(window_tok_s(rows)[0], p99)))
    return tuple(earlier)


def reselected(folder: Path, g: int) -> dict:
    """The copy's verdict by today's rules, from its stored trials and re-measurements."""
    storage = f"sqlite:///{folder / f'gpu{g}.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    options = records.read_run_options(study) or {}
    limits_ms = dict(records.read_fingerprint(study).limits_ms)
    for stored in records.read_remeasurements(study):
        if stored.stepped_down_from and not stored.earlier:
            records.write_remeasurement(study, Remeasurement(
                stored.trial_number, stored.concurrency, stored.stepped_down_from, stored.repeats,
                _rebuilt_earlier(folder, study, stored, limits_ms)))
    candidates = stored_finalists(study, int(options.get("top_k", 3)))
    selection = select_winner(candidates, limits_ms, int(options.get("repeats", 1)), REAL_GPU_NOISE_FLOOR,
                              float(options.get("confidence", 0.9)))
    w = selection.winner
    return {"verdict": selection.verdict, "winner_flags": w.flags if w else None,
            "winner_at_limit_tok_s": w.at_limit_mean_tok_s(limits_ms) if w else None,
            "equal_within_noise_flags": sorted(json.dumps(c.flags, sort_keys=True) for c in candidates
                                               if c.trial_number in selection.equal_within_noise),
            "finalists": [{"trial": c.trial_number, "baseline": c.baseline, "concurrency": c.concurrency,
                           "at_limit_tok_s": c.at_limit_tok_s(limits_ms), "meets": c.meets(limits_ms)}
                          for c in candidates],
            "gains": {name: gain.to_json() for name, gain in selection.gains.items()}}


def premise_met(c: dict) -> bool:
    """What the item asks a study's budget to hold: both baselines, three searched trials, a comparison of more
    than one finalist with none left unconfirmed. Without it an agreeing pair shows nothing about the verdict."""
    return c["baselines_run"] >= 2 and c["searched_run"] >= 3 and c["finalists_compared"] >= 2 \
        and c["unconfirmed"] == []


def agreement(a: dict, b: dict) -> dict:
    same_winner = a["winner_flags"] == b["winner_flags"] and a["winner_flags"] is not None
    same_equal_set = bool(a["equal_within_noise_flags"]) and a["equal_within_noise_flags"] == b[
        "equal_within_noise_flags"]
    ta, tb = a["winner_at_limit_tok_s"] or 0.0, b["winner_at_limit_tok_s"] or 0.0
    diff = abs(ta - tb) / max(ta, tb) if max(ta, tb) > 0 else float("nan")
    return {"premise_met": premise_met(a) and premise_met(b),
            "same_verdict": same_winner or same_equal_set, "same_winner": same_winner,
            "same_equal_within_noise_set": same_equal_set, "throughput_diff": diff,
            "throughput_within_5pct": diff <= AGREEMENT}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--reselect", action="store_true", help="also judge each copy by today's selection rules "
                   "(writes rebuilt re-measurements into the copies' databases)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    copies = [copy_summary(args.dir, g) for g in (0, 1)]
    result = {"copies": copies, "agreement": agreement(*copies)}
    if args.reselect:
        today = [{**c, **reselected(args.dir, c["copy"])} for c in copies]
        result["reselected"] = {"copies": today, "agreement": agreement(*today)}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for c in copies:
        print(f"copy {c['copy']} ({c['study']}): {c['baselines_run']} baselines + {c['searched_run']} searched "
              f"trials, stopped by {c['stopped_by']}, {c['gpu_minutes']:.1f} GPU-minutes; final comparison "
              f"{'complete' if c['unconfirmed'] == [] else 'unconfirmed: ' + str(c['unconfirmed'])}")
        print(f"  winner {c['winner_flags']} at concurrency {c['winner_concurrency']}: "
              f"{c['winner_at_limit_tok_s'] or 0:,.0f} tok/s at the limit")
        print(f"  verdict: {c['verdict']}")
    a = result["agreement"]
    if not a["premise_met"]:
        print("PREMISE NOT MET: a copy did not run both baselines, 3 searched trials and a comparison of 2 or more "
              "finalists; the agreement below says nothing about the verdict")
    _print_agreement(a)
    if args.reselect:
        print("by today's selection rules:")
        for c in result["reselected"]["copies"]:
            print(f"  copy {c['copy']}: {c['verdict']}")
            for f in c["finalists"]:
                values = ", ".join(f"{v:,.0f}" for v in f["at_limit_tok_s"])
                print(f"    trial {f['trial']} {f['baseline'] or 'searched'} at {f['concurrency']}: at the limit "
                      f"[{values}] tok/s{'' if f['meets'] else ', misses the limit'}")
            for name, gain in c["gains"].items():
                print(f"    gain over {name}: {gain['gain_pct']:+.1f}% [{gain['gain_pct_low']:+.1f}, "
                      f"{gain['gain_pct_high']:+.1f}]{' significant' if gain['significant'] else ''}")
        _print_agreement(result["reselected"]["agreement"])
    return 0


def _print_agreement(a: dict) -> None:
    print(f"same verdict: {'yes' if a['same_verdict'] else 'NO'} (same winner: {a['same_winner']}, same equal set: "
          f"{a['same_equal_within_noise_set']}); winners' throughput at the limit {a['throughput_diff']:.1%} apart "
          f"({'within' if a['throughput_within_5pct'] else 'beyond'} 5%)")


if __name__ == "__main__":
    sys.exit(main())
