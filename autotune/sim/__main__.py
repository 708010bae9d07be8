"""``python -m autotune.sim serve MODEL [vLLM flags] [--gpu-type h100] [--time-scale X] [--startup-delay-s S]``"""
from __future__ import annotations

import sys

from autotune.sim.args import parse_serve_args
from autotune.sim.server import serve_main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "serve":
        sys.stderr.write("usage: python -m autotune.sim serve MODEL [vLLM serve flags...] "
                         "[--gpu-type h100] [--time-scale X] [--startup-delay-s S]\n")
        return 2
    return serve_main(parse_serve_args(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
