"""Each run's own figures beside the server's, from `agreement_rounds.sh`'s histogram snapshots.

    python3 benchmarks/gpu/server_side.py DIR [--json]

For every run NAME-N with NAME-N.prom0 and NAME-N.prom1 (vLLM's latency histograms' sums and counts before and
after the run), the server's own mean TTFT, ITL and E2E over that run (the requests it finished in between),
the tool's means, and their difference: what the tool adds (network, its own parsing and clock). Two tools that
measure alike add the same; a run that measured higher than another on an identical stream with the same
addition was slower in the server. Also the server's mean queue and prefill times, which explain TTFT.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from autotune.loadgen.promscrape import histogram_totals, parse_prometheus, server_latency_means

from tool_results import metric_value, read_json, result_path

CLIENT_METRICS = ("ttft", "itl", "e2el")


def client_means(result: dict) -> dict[str, float]:
    """The tool's mean of each metric, from our result or vLLM's."""
    return {m: metric_value(result, (f"{m}_ms", "mean"), f"mean_{m}_ms") for m in CLIENT_METRICS}


def run_rows(folder: Path) -> list[dict]:
    rows = []
    for before in sorted(folder.glob("*.prom0"), key=lambda p: (int(p.stem.rsplit("-", 1)[1]), p.stem)):
        stem = before.stem
        after = folder / f"{stem}.prom1"
        name, r = stem.rsplit("-", 1)
        result = result_path(folder, name, int(r))
        if not after.exists() or result is None:
            continue
        server = server_latency_means(histogram_totals(parse_prometheus(before.read_text())),
                                      histogram_totals(parse_prometheus(after.read_text())))
        row = {"run": stem, "client": client_means(read_json(result)), "server": server}
        row["client_minus_server_ms"] = {m: round(row["client"][m] - server[f"server_mean_{m}_ms"], 3)
                                         for m in CLIENT_METRICS if f"server_mean_{m}_ms" in server}
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = run_rows(Path(args.dir))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| run | TTFT tool / server / added ms | ITL tool / server / added ms | E2E tool / server / added ms "
          "| server queue / prefill ms |")
    print("|---|---|---|---|---|")
    for row in rows:
        c, s, d = row["client"], row["server"], row["client_minus_server_ms"]
        cells = [f"{c[m]:.2f} / {s.get(f'server_mean_{m}_ms', float('nan')):.2f} / {d.get(m, float('nan')):+.2f}"
                 for m in CLIENT_METRICS]
        extra = f"{s.get('server_mean_queue_ms', float('nan')):.2f} / {s.get('server_mean_prefill_ms', float('nan')):.2f}"
        print(f"| {row['run']} | " + " | ".join(cells) + f" | {extra} |")


if __name__ == "__main__":
    main()
