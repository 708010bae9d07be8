"""Does the same study, run twice side by side on two cards, reach the same verdict? (issue #16, item 5)

Reads the folder `benchmarks/gpu/reproducibility.sh` writes (per copy g: `gpu<g>.json`, the `autotune run
--json` report; `gpu<g>.db`, its storage; `t0`/`t1`, the wall clock of both) and prints per copy: trials run
(baselines and searched), whether the final comparison was complete (no finalist unconfirmed), the verdict, the
winner's flags and throughput at the limit, and GPU-minutes; then whether the pair agrees: the same winner
(the same flags) or "equal within noise" over the same set of configurations, and the winners' throughputs at
the limit within 5%.

    python benchmarks/reproducibility_table.py DIR [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import optuna

from autotune import records

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
    wall_min = (int((folder / "t1").read_text()) - int((folder / "t0").read_text())) / 60.0
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
        "gpu_minutes": wall_min,  # one GPU per copy, for the pair's whole wall time
        "finalists_compared": (len(selection.gains) + 1 if selection.gains else 1) if selection else 0,
    }


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
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    copies = [copy_summary(args.dir, g) for g in (0, 1)]
    result = {"copies": copies, "agreement": agreement(*copies)}
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
    print(f"same verdict: {'yes' if a['same_verdict'] else 'NO'} (same winner: {a['same_winner']}, same equal set: "
          f"{a['same_equal_within_noise_set']}); winners' throughput at the limit {a['throughput_diff']:.1%} apart "
          f"({'within' if a['throughput_within_5pct'] else 'beyond'} 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
