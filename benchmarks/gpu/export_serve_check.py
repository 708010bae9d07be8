"""export_serve.sh's verdict, as JSON on stdout: did `vllm serve --config FILE` start from the exported file, serve
one completion, take every key of the file (vLLM's "non-default args" line, or the key's value is vLLM's default
as autotune.flags knows it), and leave the port and the GPU free?
    python3 benchmarks/gpu/export_serve_check.py DIR CONFIG HEALTHY(0|1) PORT"""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from autotune.flags import effective_flags


def main() -> None:
    folder, config, healthy, port = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
    log = (folder / "serve.log").read_text(errors="replace")
    line = re.search(r"non-default args: (\{.*\})", log)
    nondefault = line.group(1) if line else ""
    keys = {k: v for k, v in yaml.safe_load(config.read_text()).items() if k != "model"}
    # what vLLM's config reader makes of the file: `key: true` -> --key, `key: false` dropped
    argv = [f"--{k}" if v is True else [f"--{k}", str(v)] for k, v in keys.items() if v is not False]
    defaults = effective_flags({})
    not_taken = []
    for key, value in keys.items():
        if key.startswith("no-") and value is True:  # --no-X: X off
            key, value = key[3:], False
        dest = key.replace("-", "_")
        if f"'{dest}': " in nondefault:
            # the logged value: a Python repr of what vLLM parsed (a scalar's repr, or an object for a JSON flag)
            shown = nondefault.split(f"'{dest}': ", 1)[1]
            if not isinstance(value, str) or not value.startswith("{"):
                if not shown.startswith(repr(value)):
                    not_taken.append(f"{key}: file {value!r}, vLLM {shown[:40]!r}")
        elif defaults.get(key) != value:
            not_taken.append(f"{key}: file {value!r}, not among vLLM's non-default args")

    def load(name: str) -> dict:
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            return {}

    gpu = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.strip() if shutil.which("nvidia-smi") else None
    with socket.socket() as s:
        port_free = s.connect_ex(("127.0.0.1", port)) != 0
    print(json.dumps({
        "config": str(config), "argv_from_file": [w for a in argv for w in ([a] if isinstance(a, str) else a)],
        "healthy": healthy, "ready_s": int((folder / "ready_s").read_text()),
        "served_names": [m["id"] for m in load("models.json").get("data", [])],
        "completion_tokens": (load("completion.json").get("usage") or {}).get("completion_tokens"),
        "vllm_nondefault_args": nondefault, "keys_vllm_did_not_take": not_taken,
        "port_free_after": port_free, "gpu_memory_after": gpu,
    }, indent=1))


if __name__ == "__main__":
    main()
