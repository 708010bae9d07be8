"""The one place that touches aiohttp's private attributes: a workaround for aiohttp 3.14's per-chunk parser
re-entry, applied only on the exact aiohttp versions whose source was read for it.

**The cost.** From 3.14.0 on, ``StreamReader._read_nowait_chunk`` calls ``protocol.resume_reading()`` after
every HTTP chunk the stream hands out, paused or not, and ``BaseProtocol.resume_reading`` re-enters the HTTP
parser with ``data_received(b"")`` (the 3.14 parser overhaul resumes pending decompression that way). vLLM
sends every SSE event as its own chunk, so a stream of N tokens costs N parser re-entries: 206,000 for
205,000 tokens in a profiled run at 512 tokens a stream, 0.6 s of 3.4 s, the largest item after the chunk
reads themselves (docs/results/loadgen.md, session 4).

**Choice: this workaround with an exact-version allow-list, rather than a version range that needs none.** aiohttp
3.9.0-3.13.5 need none: there ``_read_nowait_chunk`` calls ``resume_reading()`` only while reading is paused, and
``resume_reading`` does not re-enter the parser (read for every tag from v3.9.0 to v3.13.5). Capping at ``<3.14``
was rejected because 3.13.5 (March 2026) is the last 3.13 release: fixes, security ones included, now ship in 3.14
and later only, and a cap would also make autotune the package that forces an older aiohttp on an environment it
shares with vLLM, or fail to install beside it: the ``vllm`` extra installs into the same environment, and while
vLLM 0.26 asks ``aiohttp>=3.13.3``, vLLM 0.33.0 asks ``aiohttp>=3.14.4`` (read from both wheels' metadata).

**What is patched, and where.** On one response's connection only (an instance attribute, never the
class), ``resume_reading`` is skipped while nothing is paused (``_reading_paused``, and ``_buffer_paused``
from 3.14.4 on), the protocol holds no unparsed ``_tail`` and the body is not compressed: the state in which
aiohttp's method only re-enters the parser to find nothing to do. Otherwise aiohttp's own method runs.

**Checked versions** (:data:`CHECKED_VERSIONS`): 3.14.0-3.14.5 from their PyPI wheels (3.14.0-3.14.3 also at
their tags in the aio-libs/aiohttp repository). In each, ``_read_nowait_chunk``,
``BaseProtocol.resume_reading``, ``ResponseHandler.resume_reading`` and ``ResponseHandler.data_received``
were read. Differences between them that matter here: 3.14.0's ``ResponseHandler.resume_reading``
rescheduled the read timeout on every call (3.14.1 on: only when it was paused; data arrival reschedules it
in all of them), and 3.14.4 added ``_buffer_paused``. The 3.15 branch and master (August 2026) still make the
unconditional call, so 3.15 will need the same check before it is listed.

**Any other version** is left alone: aiohttp's own code runs (correct, and slower where it re-enters per
chunk), and on an unlisted version from 3.14 on a warning is logged once, at import. To support a new
release: read the four functions above in it, add it to :data:`CHECKED_VERSIONS`, and run
``tests/test_loadgen_aiohttp_compat.py``. ``pyproject.toml`` allows ``aiohttp>=3.9,<3.15``: the versions
that need no workaround, and the 3.14 line, whose later patch releases run unpatched until listed; a test
keeps the upper bound at the minor after the newest checked one, so a new minor is read before it is allowed.
"""
from __future__ import annotations

import logging

import aiohttp

__all__ = ["CHECKED_VERSIONS", "needs_no_workaround", "skip_idle_resume"]

logger = logging.getLogger(__name__)

CHECKED_VERSIONS: frozenset[str] = frozenset({"3.14.0", "3.14.1", "3.14.2", "3.14.3", "3.14.4", "3.14.5"})


def needs_no_workaround(version: str) -> bool:
    """True for aiohttp releases before 3.14, which call ``resume_reading()`` only while reading is paused."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (3, 14)


_ENABLED = aiohttp.__version__ in CHECKED_VERSIONS
if not _ENABLED and not needs_no_workaround(aiohttp.__version__):
    logger.warning("aiohttp %s is not among the versions checked for the client's flow-control workaround "
                   "(%s); it runs without it, and the load generator may measure a lower capacity "
                   "(see autotune/loadgen/_aiohttp_compat.py)", aiohttp.__version__,
                   ", ".join(sorted(CHECKED_VERSIONS)))


def skip_idle_resume(resp: aiohttp.ClientResponse) -> None:
    """Make ``resp``'s connection skip ``resume_reading()`` while it has nothing to do; a no-op outside
    :data:`CHECKED_VERSIONS`. Call it once per response, before reading the body: connections are reused,
    and whether the body is compressed is a property of the response."""
    if not _ENABLED:
        return
    proto = getattr(resp.content, "_protocol", None)  # the connection's; it may be released already (whole body in)
    if proto is None:
        return
    proto._autotune_plain_body = not resp.headers.get("Content-Encoding")
    if "resume_reading" in vars(proto):  # this connection is patched already
        return
    original = type(proto).resume_reading

    def resume_reading(resume_parser: bool = True) -> None:
        if (proto._reading_paused or getattr(proto, "_buffer_paused", False) or proto._tail
                or not proto._autotune_plain_body):
            original(proto, resume_parser)

    proto.resume_reading = resume_reading
