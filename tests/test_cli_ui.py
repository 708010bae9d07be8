"""The console view's pieces that need no study: how a trial's flags read in one line."""
from __future__ import annotations

from autotune.cli.ui import short_flags


def test_short_flags_of_the_vision_knobs() -> None:
    flags = {"limit-mm-per-prompt": {"image": 4, "video": 0}, "mm-processor-cache-gb": 0, "mm-encoder-tp-mode": "data",
             "skip-mm-profiling": True, "mm-processor-cache-type": None, "enable-chunked-prefill": True}
    assert short_flags(flags) == 'mm-limit={"image":4,"video":0} mm-cache-gb=0 mm=data skip-mm-profile'
    assert short_flags({"limit-mm-per-prompt": None}) == "(vLLM defaults)"  # None: the flag is not given
