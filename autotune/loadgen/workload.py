"""Workloads: what the load generator sends.

A spec string picks the kind (DESIGN.md): ``random:IN:OUT``, ``random:IN:OUT:RANGE``, ``sharegpt:FILE``,
``jsonl:FILE``, ``mm:IN:OUT:IMAGES:WxH``. ``Workload.requests(n)`` is deterministic for a seed and
prefix-stable (``requests(5)`` is the start of ``requests(10)``), so warm-up and measured requests can
come from one call; ``requests(n, start)`` is ``requests(n)[start:]`` without making the first ``start``.

A ``jsonl`` file whose records all carry ``arrival_s`` is a timed trace: its requests keep the file's
arrival order (sorted by ``arrival_s``), are not shuffled or cycled, and the runner can replay their times.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import re
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from autotune.errors import UsageError

__all__ = ["RequestSpec", "Workload", "parse_workload", "block_png", "TOKEN_ID_LOW", "TOKEN_ID_HIGH",
           "MAX_IMAGE_PIXELS", "DEFAULT_WORKLOAD"]

# A study's workload, and `bench`'s and `sim predict`'s, when none is given. Lengths vary by ±50%: with identical
# lengths a closed loop runs in lockstep waves whose synchronized prefills, not the server, set P99 TTFT (seen on
# the H100 and the sim engine).
DEFAULT_WORKLOAD = "random:1024:512:0.5"

# The most pixels an image may have: vLLM opens images with Pillow, which refuses more than twice its
# Image.MAX_IMAGE_PIXELS (89,478,485) as a decompression bomb, so every request with a larger image would fail; and
# writing one costs seconds of CPU (100000x100000: about 30 s and 1.2 GB each). The model's processor resizes images
# far smaller anyway (GLM-4.6V-Flash: to 9,633,792 pixels at most, models.VisionSpec.max_pixels).
MAX_IMAGE_PIXELS = 2 * 89_478_485

# Random prompts are token ids in [TOKEN_ID_LOW, TOKEN_ID_HIGH): ordinary vocabulary for most tokenizers.
TOKEN_ID_LOW = 1000
TOKEN_ID_HIGH = 30000
_CHARS_PER_TOKEN = 4  # estimate for text without a tokenizer
_WORDS = ("time person year way day thing man world life hand part child eye woman place work week case point "
          "number group problem fact water room mother area money story month lot right study book word "
          "business issue side kind head house service friend father power hour game line end member law car "
          "city name team minute idea kid body back parent face level office door health art war history party "
          "result change morning reason research girl guy moment air teacher force education").split()


@dataclass(frozen=True)
class RequestSpec:
    """One request to send. ``prompt`` is text or token ids; ``images`` are ``data:image/png;base64,`` URLs
    (sent on the chat endpoint as ``image_url`` parts); ``arrival_s`` is its send time in a timed trace."""

    prompt: str | list[int]
    prompt_len: int
    output_len: int
    images: tuple[str, ...] = ()
    arrival_s: float | None = None


class Workload:
    """Base: a named, seeded source of requests. ``timed``: every request carries an ``arrival_s``."""

    timed = False

    def __init__(self, spec: str, seed: int) -> None:
        self.spec = spec
        self.seed = seed

    def requests(self, n: int, start: int = 0) -> list[RequestSpec]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "seed": self.seed}

    def without_times(self) -> Workload:
        """The same requests as a plain dataset (a study drives its own load, not a trace's times)."""
        return self

    @property
    def max_images_per_request(self) -> int:
        """The most images one request carries (0: text only)."""
        return 0

    @property
    def image_sizes_px(self) -> tuple[tuple[int, int], ...]:
        """The (width, height) of the images its requests carry, each size once (none: text only)."""
        return ()

    @property
    def trace_length(self) -> int | None:
        """A timed trace's number of requests (it is never cycled); None for any other workload."""
        return None

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])


class RandomWorkload(Workload):
    """Token-id prompts of exact length (text of exact length when a tokenizer is given)."""

    def __init__(self, spec: str, seed: int, input_len: int, output_len: int, range_ratio: float,
                 tokenizer: Any = None) -> None:
        super().__init__(spec, seed)
        self.input_len, self.output_len, self.range_ratio = input_len, output_len, range_ratio
        self.tokenizer = tokenizer
        # Request i as drawn (prompt ids as int32, or text), kept: every trial of a study sends the same stream
        # from its start, and seeding a generator per request costs more than the request (~4 KB at 1k tokens).
        self._drawn: list[tuple[np.ndarray | str, int, int]] = []

    def requests(self, n: int, start: int = 0) -> list[RequestSpec]:
        for i in range(len(self._drawn), n):
            rng = self._rng(i)
            in_len = _ranged(rng, self.input_len, self.range_ratio)
            out_len = _ranged(rng, self.output_len, self.range_ratio)
            ids = rng.integers(TOKEN_ID_LOW, TOKEN_ID_HIGH, size=in_len)
            drawn = ids.astype(np.int32) if self.tokenizer is None else _exact_text(self.tokenizer, ids.tolist(), in_len)
            self._drawn.append((drawn, in_len, out_len))
        return [RequestSpec(prompt=p if isinstance(p, str) else p.tolist(), prompt_len=in_len, output_len=out_len)
                for p, in_len, out_len in self._drawn[start:n]]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": "random", "input_len": self.input_len, "output_len": self.output_len,
                "range_ratio": self.range_ratio, "prompt": "token_ids" if self.tokenizer is None else "text"}


class MultimodalWorkload(Workload):
    """Chat prompts of about IN tokens (exact with a tokenizer) with synthetic PNG images: a count drawn per request
    from ``images`` (min, max), each image of a size drawn from ``sizes`` ((width, height) pairs). Every image is
    distinct, so a server's caches of processed images never hit; with ``pool`` > 0 the images are drawn from
    that many distinct ones (a request's images differ from each other while the pool allows), so they can."""

    def __init__(self, spec: str, seed: int, input_len: int, output_len: int, images: tuple[int, int],
                 sizes: tuple[tuple[int, int], ...], range_ratio: float = 0.0, pool: int = 0,
                 tokenizer: Any = None) -> None:
        super().__init__(spec, seed)
        self.input_len, self.output_len, self.range_ratio = input_len, output_len, range_ratio
        self.images, self.sizes, self.pool = images, sizes, pool
        self.tokenizer = tokenizer
        self._pool_urls: dict[int, str] = {}

    @property
    def max_images_per_request(self) -> int:
        return self.images[1]

    @property
    def image_sizes_px(self) -> tuple[tuple[int, int], ...]:
        return self.sizes

    def requests(self, n: int, start: int = 0) -> list[RequestSpec]:
        out = []
        for i in range(start, n):
            rng = self._rng(i)
            in_len = _ranged(rng, self.input_len, self.range_ratio)
            out_len = _ranged(rng, self.output_len, self.range_ratio)
            if self.tokenizer is None:
                prompt = " ".join(_WORDS[j] for j in rng.integers(0, len(_WORDS), size=in_len))
            else:
                ids = rng.integers(TOKEN_ID_LOW, TOKEN_ID_HIGH, size=in_len).tolist()
                prompt = _exact_text(self.tokenizer, ids, in_len)
            count = int(rng.integers(self.images[0], self.images[1] + 1))
            if self.pool:
                picks = rng.choice(self.pool, size=count, replace=count > self.pool)
                images = tuple(self._pool_image(int(j)) for j in picks)
            else:
                images = tuple(self._image(rng) for _ in range(count))
            out.append(RequestSpec(prompt=prompt, prompt_len=in_len, output_len=out_len, images=images))
        return out

    def _image(self, rng: np.random.Generator) -> str:
        width, height = self.sizes[int(rng.integers(0, len(self.sizes)))] if len(self.sizes) > 1 else self.sizes[0]
        return _png_data_url(rng, width, height)

    def _pool_image(self, index: int) -> str:
        """The pool's image ``index``: the same in every request, drawn from its own stream (not a request's)."""
        if index not in self._pool_urls:
            self._pool_urls[index] = self._image(np.random.default_rng([self.seed, _POOL_STREAM, index]))
        return self._pool_urls[index]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": "mm", "input_len": self.input_len, "output_len": self.output_len,
                "range_ratio": self.range_ratio, "images_min": self.images[0], "images_max": self.images[1],
                "sizes": [f"{w}x{h}" for w, h in self.sizes], "image_pool": self.pool,
                "prompt_len_exact": self.tokenizer is not None}


_POOL_STREAM = 1 << 31  # the pool's seeds differ from every request's [seed, index]


class FileWorkload(Workload):
    """Records from a dataset file, shuffled by the seed, cycled when more are asked for than exist.
    A timed trace (every record has ``arrival_s``) keeps its order by arrival and is never cycled."""

    def __init__(self, spec: str, seed: int, kind: str, path: Path, records: list[RequestSpec],
                 estimated_lengths: bool, sha256: str) -> None:
        super().__init__(spec, seed)
        self.kind, self.path, self.records = kind, path, records
        self.estimated_lengths = estimated_lengths
        # The file's content, not its name, is the workload: a study resumed on a rewritten file at the same path
        # would put figures of two workloads under one study (the fingerprint compares this).
        self.sha256 = sha256
        self.timed = all(r.arrival_s is not None for r in records)
        if self.timed:
            self._order = sorted(range(len(records)), key=lambda i: records[i].arrival_s)  # stable
        else:
            self._order = np.random.default_rng(seed).permutation(len(records)).tolist()

    @property
    def trace_length(self) -> int | None:
        return len(self._order) if self.timed else None

    def requests(self, n: int, start: int = 0) -> list[RequestSpec]:
        if self.timed and n > len(self._order):
            raise UsageError(f"trace {self.path} has {len(self._order)} requests, {n} were asked for "
                             "(a timed trace is not repeated: ask for fewer)")
        return [self.records[self._order[i % len(self._order)]] for i in range(start, n)]

    def without_times(self) -> FileWorkload:
        if not self.timed:
            return self
        records = [replace(r, arrival_s=None) for r in self.records]
        return FileWorkload(self.spec, self.seed, self.kind, self.path, records, self.estimated_lengths,
                            self.sha256)

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "kind": self.kind, "path": str(self.path), "records": len(self.records),
               "lengths_estimated": self.estimated_lengths, "sha256": self.sha256}
        if self.timed:
            out["timed"] = True
        return out


def parse_workload(spec: str, seed: int = 0, tokenizer: str | None = None) -> Workload:
    """Build the workload a spec string names. Bad specs, files or records raise :class:`UsageError`."""
    kind, _, rest = spec.partition(":")
    tok = _load_tokenizer(tokenizer) if tokenizer else None
    if kind == "random":
        parts = rest.split(":")
        if len(parts) not in (2, 3):
            raise UsageError(f"workload {spec!r}: expected random:IN:OUT or random:IN:OUT:RANGE")
        in_len = _pos_int(parts[0], spec, "IN")
        out_len = _pos_int(parts[1], spec, "OUT")
        ratio = 0.0
        if len(parts) == 3:
            ratio = _float(parts[2], spec, "RANGE")
            if not 0.0 <= ratio < 1.0:
                raise UsageError(f"workload {spec!r}: RANGE must be in [0, 1), got {parts[2]}")
        return RandomWorkload(spec, seed, in_len, out_len, ratio, tok)
    if kind == "mm":
        return _parse_mm(spec, rest, seed, tok)
    if kind in ("sharegpt", "jsonl"):
        if not rest:
            raise UsageError(f"workload {spec!r}: expected {kind}:FILE")
        path = Path(rest).expanduser()
        if not path.is_file():
            raise UsageError(f"workload {spec!r}: file not found: {path}")
        if kind == "sharegpt":
            records, estimated = _read_sharegpt(path, tok), tok is None
        else:
            records, estimated = _read_jsonl(path, tok)
        if not records:
            raise UsageError(f"workload {spec!r}: no usable records in {path}")
        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        return FileWorkload(spec, seed, kind, path, records, estimated_lengths=estimated, sha256=sha256)
    raise UsageError(f"workload {spec!r}: unknown kind {kind!r} (use random, sharegpt, jsonl or mm)")


def _parse_mm(spec: str, rest: str, seed: int, tok: Any) -> MultimodalWorkload:
    """``mm:IN:OUT:IMAGES:SIZES[:range=R][:pool=K]``. IMAGES: a count or MIN-MAX (drawn per request); SIZES: WxH
    or several, comma-separated (drawn per image); range: text lengths vary by ±R as random's RANGE; pool: images
    drawn from K distinct ones (default: every image distinct)."""
    usage = "expected mm:IN:OUT:IMAGES:WxH[,WxH...][:range=R][:pool=K]"
    parts = rest.split(":")
    if len(parts) < 4:
        raise UsageError(f"workload {spec!r}: {usage}")
    in_len, out_len = _pos_int(parts[0], spec, "IN"), _pos_int(parts[1], spec, "OUT")
    counts = re.fullmatch(r"(\d+)(?:-(\d+))?", parts[2].strip())
    images = (int(counts[1]), int(counts[2] or counts[1])) if counts else (0, -1)
    if images[1] < images[0]:
        raise UsageError(f"workload {spec!r}: IMAGES must be a count >= 0 or MIN-MAX with MIN <= MAX, got {parts[2]!r}")
    sizes = []
    for item in parts[3].split(","):
        size = item.strip().lower().split("x")
        if len(size) != 2:
            raise UsageError(f"workload {spec!r}: image size must be WxH, got {item!r}")
        width, height = _pos_int(size[0], spec, "W"), _pos_int(size[1], spec, "H")
        if width * height > MAX_IMAGE_PIXELS:
            raise UsageError(f"workload {spec!r}: image size {item.strip()} is {width * height:,} pixels, over the "
                             f"{MAX_IMAGE_PIXELS:,} vLLM accepts (Pillow's decompression-bomb limit)")
        sizes.append((width, height))
    options: dict[str, str] = {}
    for item in parts[4:]:
        key, eq, value = item.partition("=")
        if not eq or key not in ("range", "pool") or key in options:
            raise UsageError(f"workload {spec!r}: unknown or repeated option {item!r} ({usage})")
        options[key] = value
    ratio = _float(options.get("range", "0"), spec, "range")
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"workload {spec!r}: range must be in [0, 1), got {options['range']}")
    pool = _int(options.get("pool", "0"), spec, "pool")
    if pool < 0 or ("pool" in options and pool == 0):
        raise UsageError(f"workload {spec!r}: pool must be a positive number of distinct images, got {options['pool']}")
    return MultimodalWorkload(spec, seed, in_len, out_len, images, tuple(sizes), ratio, pool, tok)


# ---- dataset files ----------------------------------------------------------------------------------

def _read_sharegpt(path: Path, tok: Any) -> list[RequestSpec]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"sharegpt file {path}: not readable JSON ({_first_line(e)})") from e
    if not isinstance(data, list):
        raise UsageError(f"sharegpt file {path}: expected a JSON list of conversations")
    records = []
    for entry in data:  # like vLLM: skip entries without a human turn followed by a gpt answer
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list):
            continue
        pair = _first_exchange(turns)
        if pair is None:
            continue
        prompt, answer = pair
        records.append(RequestSpec(prompt=prompt, prompt_len=_count_tokens(tok, prompt),
                                   output_len=_count_tokens(tok, answer)))
    return records


def _first_exchange(turns: list[Any]) -> tuple[str, str] | None:
    for i, turn in enumerate(turns[:-1]):
        nxt = turns[i + 1]
        if not (isinstance(turn, dict) and isinstance(nxt, dict)):
            return None
        if turn.get("from") in ("human", "user") and nxt.get("from") in ("gpt", "assistant"):
            prompt, answer = turn.get("value"), nxt.get("value")
            if isinstance(prompt, str) and isinstance(answer, str) and prompt and answer:
                return prompt, answer
            return None
    return None


def _read_jsonl(path: Path, tok: Any) -> tuple[list[RequestSpec], bool]:
    """The records, and whether any prompt length had to be estimated (text, no prompt_len, no tokenizer)."""
    records = []
    estimated = False
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"jsonl file {path}: not readable ({_first_line(e)})") from e
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"jsonl file {path} line {lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where}: not JSON ({e.msg})") from e
        if not isinstance(rec, dict):
            raise UsageError(f"{where}: expected an object")
        prompt = rec.get("prompt")
        is_ids = isinstance(prompt, list) and bool(prompt) and all(isinstance(x, int) and not isinstance(x, bool)
                                                                    for x in prompt)
        if not (isinstance(prompt, str) and prompt) and not is_ids:
            raise UsageError(f"{where}: 'prompt' must be a non-empty string or list of token ids")
        out_len = rec.get("output_len", rec.get("max_tokens"))
        if not isinstance(out_len, int) or isinstance(out_len, bool) or out_len < 1:
            raise UsageError(f"{where}: 'output_len' (or 'max_tokens') must be a positive integer")
        prompt_len = rec.get("prompt_len")
        if prompt_len is None:
            prompt_len = len(prompt) if is_ids else _count_tokens(tok, prompt)
            estimated = estimated or (not is_ids and tok is None)
        elif not isinstance(prompt_len, int) or isinstance(prompt_len, bool) or prompt_len < 1:
            raise UsageError(f"{where}: 'prompt_len' must be a positive integer")
        arrival_s = rec.get("arrival_s")
        if arrival_s is not None and (not isinstance(arrival_s, (int, float)) or isinstance(arrival_s, bool)
                                      or not math.isfinite(arrival_s) or arrival_s < 0):
            raise UsageError(f"{where}: 'arrival_s' must be a number of seconds >= 0")
        records.append(RequestSpec(prompt=prompt, prompt_len=prompt_len, output_len=out_len,
                                   arrival_s=None if arrival_s is None else float(arrival_s)))
    timed = sum(r.arrival_s is not None for r in records)
    if 0 < timed < len(records):
        raise UsageError(f"jsonl file {path}: {timed} of {len(records)} records have 'arrival_s' "
                         "(a timed trace needs it on every record)")
    return records, estimated


# ---- tokenizer (optional) -----------------------------------------------------------------------------

def _load_tokenizer(folder: str) -> Any:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UsageError(f"tokenizer folder not found: {path}")
    try:
        from transformers import AutoTokenizer  # optional dependency
    except ImportError as e:
        raise UsageError("a tokenizer was given but 'transformers' is not installed") from e
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - any loading failure is bad user input
        raise UsageError(f"cannot load tokenizer from {path}: {_first_line(e)}") from e


def _count_tokens(tok: Any, text: str) -> int:
    if tok is None:
        return max(1, math.ceil(len(text) / _CHARS_PER_TOKEN))
    return max(1, len(tok.encode(text, add_special_tokens=False)))


def _exact_text(tok: Any, ids: list[int], length: int) -> str:
    """Text that encodes to exactly ``length`` tokens: decode, re-encode, trim or pad, repeat."""
    text = tok.decode(ids)
    for _ in range(10):
        enc = tok.encode(text, add_special_tokens=False)
        if len(enc) == length:
            return text
        enc = enc[:length] if len(enc) > length else enc + ids[: length - len(enc)]
        text = tok.decode(enc)
    return text  # close enough; the server's usage gives the exact count


# ---- synthetic PNG ------------------------------------------------------------------------------------

def block_png(blocks: np.ndarray, width: int, height: int, block: int) -> bytes:
    """A ``width`` × ``height`` 8-bit RGB PNG of ``block`` × ``block`` squares, square (i, j) coloured
    ``blocks[i, j]`` (an array of at least ceil(H/block) × ceil(W/block) × 3 uint8). No imaging library: the
    rows are written as PNG's filters want them and deflated here.

    Fast because it is mostly zeros: the first row of each band of squares is stored as is (filter 0), the
    rows under it as "same as the row above" (filter 2, all zeros); those zero rows are deflated once per width
    and band height and reused. A full flush after each piece keeps every piece free of references outside
    itself, so the pieces concatenate into one valid deflate stream; the Adler-32 covers the whole image."""
    row_bytes = 1 + width * 3
    comp = zlib.compressobj(6, zlib.DEFLATED, -10, 2)  # a band's row repeats every 48 bytes: a small window does
    pieces: list[bytes] = []
    adler = 1
    for i in range(-(-height // block)):
        raw = b"\x00" + np.repeat(blocks[i, : -(-width // block)], block, axis=0)[:width].tobytes()
        pieces.append(comp.compress(raw) + comp.flush(zlib.Z_FULL_FLUSH))
        adler = zlib.adler32(raw, adler)
        repeats = min(block, height - i * block) - 1
        if repeats:
            deflated, length, byte_sum, weighted_sum = _zero_rows(row_bytes, repeats)
            pieces.append(deflated)
            a, b = adler & 0xFFFF, adler >> 16  # Adler-32 of the piece appended, without reading it again
            adler = (((b + length * a + weighted_sum) % _ADLER_MOD) << 16) | ((a + byte_sum) % _ADLER_MOD)
    pieces.append(comp.flush(zlib.Z_FINISH))
    idat = b"\x78\x9c" + b"".join(pieces) + struct.pack(">I", adler)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


_ADLER_MOD = 65521


@functools.lru_cache(maxsize=64)
def _zero_rows(row_bytes: int, rows: int) -> tuple[bytes, int, int, int]:
    """``rows`` rows of filter 2 (zero differences): deflated (a full flush ends it), and what appending them
    does to an Adler-32 (a, b): a += byte_sum, b += length × a + weighted_sum (their Adler-32 from a = b = 0)."""
    raw = (b"\x02" + bytes(row_bytes - 1)) * rows
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    from_zero = zlib.adler32(raw, 0)
    return comp.compress(raw) + comp.flush(zlib.Z_FULL_FLUSH), len(raw), from_zero & 0xFFFF, from_zero >> 16


def _png_data_url(rng: np.random.Generator, width: int, height: int, block: int = 16) -> str:
    # Seeded block noise: every image distinct, small on the wire. Vision cost depends on W x H, not content.
    blocks = rng.integers(0, 256, size=(-(-height // block), -(-width // block), 3), dtype=np.uint8)
    return "data:image/png;base64," + base64.b64encode(block_png(blocks, width, height, block)).decode("ascii")


# ---- helpers ------------------------------------------------------------------------------------------

def _ranged(rng: np.random.Generator, value: int, ratio: float) -> int:
    if ratio <= 0:
        return value
    low, high = max(1, math.floor(value * (1 - ratio))), max(1, math.ceil(value * (1 + ratio)))
    return int(rng.integers(low, high + 1))


def _int(text: str, spec: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"workload {spec!r}: {name} must be an integer, got {text!r}") from None


def _pos_int(text: str, spec: str, name: str) -> int:
    value = _int(text, spec, name)
    if value < 1:
        raise UsageError(f"workload {spec!r}: {name} must be positive, got {text}")
    return value


def _float(text: str, spec: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"workload {spec!r}: {name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"workload {spec!r}: {name} must be finite, got {text!r}")
    return value


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
