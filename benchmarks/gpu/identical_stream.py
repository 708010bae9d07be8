"""One request stream for both tools: the prompts and send times `vllm bench serve` will use, as files.

    python3 benchmarks/gpu/identical_stream.py make --tokenizer /tmp/model --num-prompts 960 --rate 8 \
        --seed 7 --input-len 1024 --output-len 512 --dir DIR
    python3 benchmarks/gpu/identical_stream.py check DIR/trace.jsonl VLLM_RESULT.json[.gz] OURS_RECORDS.jsonl.gz

`make` writes DIR/vllm-prompts.jsonl (vLLM's `custom` dataset: run it with `--dataset-name custom
--disable-shuffle --skip-chat-template --custom-output-len OUT --ignore-eos --request-rate RATE --burstiness 1
--seed SEED`) and DIR/trace.jsonl (the same prompts with `arrival_s`, for `autotune bench --workload
jsonl:DIR/trace.jsonl`). The prompts are our `random:IN:OUT` text prompts (exact length with the tokenizer).
The send times are vLLM 0.26's own: `main_async` seeds NumPy's global generator with `--seed`, then
`get_request` draws one gamma gap per request (the first request too), sums them and rescales the sum to
N / RATE. Nothing else draws from that generator in between for the custom dataset.

`check` says how identical the two runs' streams were: each run's send offsets against the trace (first send
at 0; vLLM's `start_times` from `--save-detailed`, ours from `--records`), and prompt lengths.
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np


def vllm_send_times(n: int, rate: float, seed: int, burstiness: float = 1.0) -> list[float]:
    """The cumulative delays `vllm bench serve --request-rate RATE --burstiness B --seed SEED` sleeps to."""
    np.random.seed(seed)
    theta = 1.0 / (rate * burstiness)
    delays = [np.random.gamma(shape=burstiness, scale=theta) for _ in range(n)]
    cum = np.cumsum(delays)
    return (cum * ((n / rate) / cum[-1])).tolist()


def make(args: argparse.Namespace) -> None:
    from autotune.loadgen.workload import parse_workload

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    wl = parse_workload(f"random:{args.input_len}:{args.output_len}", seed=args.prompt_seed, tokenizer=args.tokenizer)
    requests = wl.requests(args.num_prompts)
    times = vllm_send_times(args.num_prompts, args.rate, args.seed)
    with open(out / "vllm-prompts.jsonl", "w") as f:
        for r in requests:
            f.write(json.dumps({"prompt": r.prompt, "output_tokens": r.output_len}) + "\n")
    with open(out / "trace.jsonl", "w") as f:
        for r, t in zip(requests, times):
            f.write(json.dumps({"prompt": r.prompt, "output_len": r.output_len, "prompt_len": r.prompt_len,
                                "arrival_s": round(t, 6)}) + "\n")
    print(json.dumps({"dir": str(out), "requests": len(requests), "span_s": times[-1] - times[0]}))


def _read(path: Path) -> str:
    return gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()


def check(args: argparse.Namespace) -> dict:
    trace = [json.loads(line) for line in _read(Path(args.trace)).splitlines() if line.strip()]
    want = np.array([t["arrival_s"] for t in trace])
    want -= want[0]
    vllm = json.loads(_read(Path(args.vllm_result)))
    ours = [json.loads(line) for line in _read(Path(args.ours_records)).splitlines() if line.strip()]
    ours = [r for r in ours if not r["warmup"]]
    report: dict = {"requests": len(want)}
    starts = np.array(vllm["start_times"], dtype=float)  # in request order (vLLM keeps the input order)
    report["vllm_send_offset_ms"] = _offsets(starts - starts.min(), want)
    o = np.array([r["start_s"] for r in sorted(ours, key=lambda r: r["i"])], dtype=float)
    report["ours_send_offset_ms"] = _offsets(o - o.min(), want)
    report["vllm_input_lens"] = _spread(vllm.get("input_lens", []))
    report["ours_prompt_tokens"] = _spread([r["prompt_tokens"] for r in ours if r["prompt_tokens"] is not None])
    report["vllm_output_lens"] = _spread(vllm.get("output_lens", []))
    report["ours_output_tokens"] = _spread([r["output_tokens"] for r in ours if r["output_tokens"] is not None])
    return report


def _offsets(got: np.ndarray, want: np.ndarray) -> dict:
    if len(got) != len(want):
        return {"count": int(len(got)), "expected": int(len(want))}
    d = 1000 * (got - want)
    return {"median": round(float(np.median(d)), 2), "p99_abs": round(float(np.percentile(np.abs(d), 99)), 2),
            "max_abs": round(float(np.abs(d).max()), 2)}


def _spread(values: list) -> dict:
    if not values:
        return {}
    a = np.array(values, dtype=float)
    return {"min": a.min(), "mean": round(float(a.mean()), 2), "max": a.max()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--tokenizer", default=None, help="model folder (text prompts of exact length; without it, "
                   "token-id prompts, which vLLM's custom dataset cannot read)")
    m.add_argument("--num-prompts", type=int, required=True)
    m.add_argument("--rate", type=float, required=True)
    m.add_argument("--seed", type=int, required=True, help="vLLM's --seed (the send times)")
    m.add_argument("--prompt-seed", type=int, default=None, help="our workload seed (default: --seed)")
    m.add_argument("--input-len", type=int, default=1024)
    m.add_argument("--output-len", type=int, default=512)
    m.add_argument("--dir", required=True)
    c = sub.add_parser("check")
    c.add_argument("trace")
    c.add_argument("vllm_result")
    c.add_argument("ours_records")
    args = ap.parse_args()
    if args.cmd == "make":
        if args.prompt_seed is None:
            args.prompt_seed = args.seed
        make(args)
    else:
        print(json.dumps(check(args)))


if __name__ == "__main__":
    main()
