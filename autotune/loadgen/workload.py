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
import json
import math
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from autotune.errors import UsageError

__all__ = ["RequestSpec", "Workload", "parse_workload", "png_bytes", "TOKEN_ID_LOW", "TOKEN_ID_HIGH"]

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
    """Chat prompts of about IN tokens (exact with a tokenizer) with IMAGES synthetic PNGs of WxH each."""

    def __init__(self, spec: str, seed: int, input_len: int, output_len: int, images: int, width: int,
                 height: int, tokenizer: Any = None) -> None:
        super().__init__(spec, seed)
        self.input_len, self.output_len = input_len, output_len
        self.images, self.width, self.height = images, width, height
        self.tokenizer = tokenizer

    def requests(self, n: int, start: int = 0) -> list[RequestSpec]:
        out = []
        for i in range(start, n):
            rng = self._rng(i)
            if self.tokenizer is None:
                prompt = " ".join(_WORDS[j] for j in rng.integers(0, len(_WORDS), size=self.input_len))
            else:
                ids = rng.integers(TOKEN_ID_LOW, TOKEN_ID_HIGH, size=self.input_len).tolist()
                prompt = _exact_text(self.tokenizer, ids, self.input_len)
            images = tuple(_png_data_url(rng, self.width, self.height) for _ in range(self.images))
            out.append(RequestSpec(prompt=prompt, prompt_len=self.input_len, output_len=self.output_len, images=images))
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": "mm", "input_len": self.input_len, "output_len": self.output_len,
                "images": self.images, "width": self.width, "height": self.height,
                "prompt_len_exact": self.tokenizer is not None}


class FileWorkload(Workload):
    """Records from a dataset file, shuffled by the seed, cycled when more are asked for than exist.
    A timed trace (every record has ``arrival_s``) keeps its order by arrival and is never cycled."""

    def __init__(self, spec: str, seed: int, kind: str, path: Path, records: list[RequestSpec],
                 estimated_lengths: bool) -> None:
        super().__init__(spec, seed)
        self.kind, self.path, self.records = kind, path, records
        self.estimated_lengths = estimated_lengths
        self.timed = all(r.arrival_s is not None for r in records)
        if self.timed:
            self._order = sorted(range(len(records)), key=lambda i: records[i].arrival_s)  # stable
        else:
            self._order = np.random.default_rng(seed).permutation(len(records)).tolist()

    def requests(self, n: int, start: int = 0) -> list[RequestSpec]:
        if self.timed and n > len(self._order):
            raise UsageError(f"trace {self.path} has {len(self._order)} requests, {n} were asked for "
                             "(a timed trace is not repeated: ask for fewer)")
        return [self.records[self._order[i % len(self._order)]] for i in range(start, n)]

    def without_times(self) -> FileWorkload:
        if not self.timed:
            return self
        records = [replace(r, arrival_s=None) for r in self.records]
        return FileWorkload(self.spec, self.seed, self.kind, self.path, records, self.estimated_lengths)

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "kind": self.kind, "path": str(self.path), "records": len(self.records),
               "lengths_estimated": self.estimated_lengths}
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
        parts = rest.split(":")
        if len(parts) != 4:
            raise UsageError(f"workload {spec!r}: expected mm:IN:OUT:IMAGES:WxH")
        in_len, out_len = _pos_int(parts[0], spec, "IN"), _pos_int(parts[1], spec, "OUT")
        images = _int(parts[2], spec, "IMAGES")
        if images < 0:
            raise UsageError(f"workload {spec!r}: IMAGES must be >= 0, got {parts[2]}")
        size = parts[3].lower().split("x")
        if len(size) != 2:
            raise UsageError(f"workload {spec!r}: image size must be WxH, got {parts[3]!r}")
        width, height = _pos_int(size[0], spec, "W"), _pos_int(size[1], spec, "H")
        return MultimodalWorkload(spec, seed, in_len, out_len, images, width, height, tok)
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
        return FileWorkload(spec, seed, kind, path, records, estimated_lengths=estimated)
    raise UsageError(f"workload {spec!r}: unknown kind {kind!r} (use random, sharegpt, jsonl or mm)")


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

def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as a PNG (zlib + struct, no imaging library). Rows equal to the
    one above use filter 2 (Up), which compresses to almost nothing."""
    height, width, _ = pixels.shape
    zero_row = b"\x02" + bytes(width * 3)
    raw = bytearray()
    prev: bytes | None = None
    for row in pixels:
        data = row.tobytes()
        raw += zero_row if data == prev else b"\x00" + data
        prev = data

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw), 6)) + \
        chunk(b"IEND", b"")


def _png_data_url(rng: np.random.Generator, width: int, height: int, block: int = 16) -> str:
    # Seeded block noise: every image distinct, small on the wire. Vision cost depends on W x H, not content.
    blocks = rng.integers(0, 256, size=(-(-height // block), -(-width // block), 3), dtype=np.uint8)
    pixels = np.repeat(np.repeat(blocks, block, axis=0), block, axis=1)[:height, :width]
    return "data:image/png;base64," + base64.b64encode(png_bytes(np.ascontiguousarray(pixels))).decode("ascii")


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
