from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from autotune.errors import UsageError
from autotune.loadgen.workload import (
    MAX_IMAGE_PIXELS,
    TOKEN_ID_HIGH,
    TOKEN_ID_LOW,
    RequestSpec,
    block_png,
    parse_workload,
)


def _decode_png(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert (depth, color) == (8, 2)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def test_random_fixed_lengths_are_exact_token_ids() -> None:
    reqs = parse_workload("random:100:20").requests(5)
    assert [r.prompt_len for r in reqs] == [100] * 5 and [r.output_len for r in reqs] == [20] * 5
    for r in reqs:
        assert isinstance(r.prompt, list) and len(r.prompt) == 100
        assert all(TOKEN_ID_LOW <= t < TOKEN_ID_HIGH for t in r.prompt)
    assert reqs[0].prompt != reqs[1].prompt  # no accidental prefix-cache hits


def test_random_is_deterministic_and_prefix_stable() -> None:
    a = parse_workload("random:50:10:0.5", seed=3).requests(20)
    b = parse_workload("random:50:10:0.5", seed=3).requests(30)
    c = parse_workload("random:50:10:0.5", seed=4).requests(20)
    assert a == b[:20]
    assert a != c


def test_random_range_bounds() -> None:
    reqs = parse_workload("random:100:40:0.2", seed=1).requests(300)
    ins, outs = [r.prompt_len for r in reqs], [r.output_len for r in reqs]
    assert 80 <= min(ins) < 90 and 110 < max(ins) <= 120
    assert 32 <= min(outs) and max(outs) <= 48
    assert all(len(r.prompt) == r.prompt_len for r in reqs)


def test_describe_has_spec_and_seed() -> None:
    d = parse_workload("random:8:4", seed=7).describe()
    assert d["spec"] == "random:8:4" and d["seed"] == 7 and d["kind"] == "random"
    json.dumps(d)


def test_mm_images_are_distinct_pngs_of_the_asked_size() -> None:
    reqs = parse_workload("mm:64:8:2:40x24", seed=0).requests(2)
    images = [url for r in reqs for url in r.images]
    assert len(images) == 4 and len(set(images)) == 4
    for url in images:
        assert url.startswith("data:image/png;base64,")
        width, height, raw = _decode_png(base64.b64decode(url.split(",", 1)[1]))
        assert (width, height) == (40, 24)
        assert len(raw) == height * (1 + width * 3)
    assert isinstance(reqs[0].prompt, str) and len(reqs[0].prompt.split()) == 64
    assert parse_workload("mm:64:8:2:40x24", seed=0).requests(2) == reqs


def test_block_png_is_what_pillow_decodes() -> None:
    # the encoder's own shortcuts (reused deflated zero rows, an Adler-32 extended without reading them) checked
    # against a real decoder, at sizes that are and are not multiples of the block
    from PIL import Image

    rng = np.random.default_rng(0)
    for width, height, block in ((50, 40, 16), (17, 33, 4), (64, 64, 16), (1, 1, 16), (300, 7, 16)):
        blocks = rng.integers(0, 256, size=(-(-height // block), -(-width // block), 3), dtype=np.uint8)
        data = block_png(blocks, width, height, block)
        _, _, raw = _decode_png(data)  # zlib checks the Adler-32
        assert len(raw) == height * (1 + width * 3)
        expected = np.repeat(np.repeat(blocks, block, axis=0), block, axis=1)[:height, :width]
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (width, height) and image.mode == "RGB"
            assert np.array_equal(np.asarray(image), expected)


def test_mm_counts_sizes_and_text_lengths_are_drawn_per_request() -> None:
    spec = "mm:100:20:1-3:64x64,96x48:range=0.2"
    wl = parse_workload(spec, seed=5)
    reqs = wl.requests(150)
    counts = {len(r.images) for r in reqs}
    assert counts == {1, 2, 3} and wl.max_images_per_request == 3
    sizes = {_decode_png(base64.b64decode(url.split(",", 1)[1]))[:2] for r in reqs[:40] for url in r.images}
    assert sizes == {(64, 64), (96, 48)}
    assert 80 <= min(r.prompt_len for r in reqs) < 90 and 110 < max(r.prompt_len for r in reqs) <= 120
    assert all(len(str(r.prompt).split()) == r.prompt_len for r in reqs)
    assert len({url for r in reqs for url in r.images}) == sum(len(r.images) for r in reqs)  # all distinct
    assert parse_workload(spec, seed=5).requests(160, 150) == wl.requests(160)[150:]  # deterministic, prefix-stable
    assert wl.describe()["images_max"] == 3 and wl.describe()["sizes"] == ["64x64", "96x48"]


def test_mm_pool_repeats_images_across_requests_only_when_asked() -> None:
    reqs = parse_workload("mm:16:4:2:64x64:pool=3", seed=1).requests(50)
    urls = [url for r in reqs for url in r.images]
    assert len(set(urls)) == 3  # every pooled image is used, and only those
    assert all(len(set(r.images)) == 2 for r in reqs)  # two distinct images per request while the pool allows
    assert parse_workload("mm:16:4:2:64x64:pool=3", seed=2).requests(1)[0].images[0] not in urls
    assert parse_workload("mm:16:4:0:64x64").max_images_per_request == 0
    assert parse_workload("random:16:4").max_images_per_request == 0


def test_sharegpt_parsing(tmp_path: Path) -> None:
    data = [
        {"conversations": [{"from": "human", "value": "hello there " * 4}, {"from": "gpt", "value": "x" * 40}]},
        {"conversations": [{"from": "human", "value": "only a question"}]},  # skipped: no answer
        {"id": "no conversations"},
        {"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "q?"},
                           {"from": "gpt", "value": "a" * 8}]},
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    wl = parse_workload(f"sharegpt:{path}", seed=0)
    reqs = wl.requests(4)
    prompts = {r.prompt for r in reqs}
    assert prompts == {"hello there " * 4, "q?"}
    by_prompt = {r.prompt: r for r in reqs}
    assert by_prompt["hello there " * 4].output_len == 10  # 40 chars / 4 without a tokenizer
    assert wl.describe()["records"] == 2 and wl.describe()["lengths_estimated"] is True


def test_jsonl_parsing(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text('{"prompt": "abc def", "output_len": 5, "prompt_len": 2}\n\n'
                    '{"prompt": [11, 12, 13], "max_tokens": 7}\n')
    reqs = parse_workload(f"jsonl:{path}").requests(4)
    specs = sorted({(str(r.prompt), r.prompt_len, r.output_len) for r in reqs})
    assert specs == [("[11, 12, 13]", 3, 7), ("abc def", 2, 5)]
    assert len(reqs) == 4  # cycled
    assert parse_workload(f"jsonl:{path}").describe()["lengths_estimated"] is False  # given or token ids
    path.write_text('{"prompt": "abc def", "output_len": 5}\n')  # text, no prompt_len, no tokenizer
    assert parse_workload(f"jsonl:{path}").describe()["lengths_estimated"] is True


@pytest.mark.parametrize("spec, words", [
    ("random:10", "expected random:IN:OUT"),
    ("random:0:5", "IN must be positive"),
    ("random:a:5", "IN must be an integer"),
    ("random:10:5:1.5", "RANGE must be in"),
    ("random:10:5:nan", "RANGE must be finite"),
    ("mm:10:5:1:64", "WxH"),
    ("mm:10:5:-1:64x64", "IMAGES must be a count >= 0 or MIN-MAX"),
    ("mm:10:5:3-1:64x64", "MIN <= MAX"),
    ("mm:10:5:1:64x64,64", "image size must be WxH, got '64'"),
    ("mm:10:5:1:64x0", "H must be positive"),
    ("mm:10:5:1:64x64:pool=0", "pool must be a positive number"),
    ("mm:10:5:1:64x64:range=1.5", "range must be in"),
    ("mm:10:5:1:64x64:cache=1", "unknown or repeated option 'cache=1'"),
    ("mm:10:5:1:64x64:pool=2:pool=3", "unknown or repeated option 'pool=3'"),
    ("poisson:1:2", "unknown kind"),
    ("sharegpt:/nonexistent/file.json", "file not found"),
    ("jsonl:", "expected jsonl:FILE"),
])
def test_bad_specs(spec: str, words: str) -> None:
    with pytest.raises(UsageError, match=words) as info:
        parse_workload(spec)
    assert "\n" not in str(info.value)


def test_an_image_larger_than_vllm_opens_is_refused() -> None:
    """An image over Pillow's decompression-bomb limit fails every request on vLLM, and drawing one took seconds
    each (`sim predict` with 100000x100000 images ran for hours); up to the limit is fine (parsed, not drawn here)."""
    side = int(MAX_IMAGE_PIXELS**0.5)
    parse_workload(f"mm:10:5:1:{side}x{side}")
    too_big = f"{side + 1}x{side + 1}"
    with pytest.raises(UsageError, match=f"image size {too_big} is {(side + 1) ** 2:,} pixels, over the "
                                         f"{MAX_IMAGE_PIXELS:,} vLLM accepts") as info:
        parse_workload(f"mm:10:5:1:64x64,{too_big}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("line, words", [
    ("not json", "line 1: not JSON"),
    ('{"prompt": "x"}', "output_len"),
    ('{"prompt": "", "output_len": 3}', "prompt"),
    ('{"prompt": "x", "output_len": 0}', "output_len"),
    ('{"prompt": "x", "output_len": 2, "prompt_len": -1}', "prompt_len"),
    ("[1, 2]", "expected an object"),
])
def test_bad_jsonl_records(tmp_path: Path, line: str, words: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UsageError, match=words):
        parse_workload(f"jsonl:{path}")


def test_bad_sharegpt_files(tmp_path: Path) -> None:
    path = tmp_path / "sg.json"
    path.write_text("{not json")
    with pytest.raises(UsageError, match="not readable JSON"):
        parse_workload(f"sharegpt:{path}")
    path.write_text(json.dumps([{"conversations": [{"from": "gpt", "value": "a"}]}]))
    with pytest.raises(UsageError, match="no usable records"):
        parse_workload(f"sharegpt:{path}")


def test_tokenizer_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="tokenizer folder not found"):
        parse_workload("random:4:4", tokenizer=str(tmp_path / "missing"))


def test_request_spec_is_frozen() -> None:
    spec = RequestSpec(prompt="x", prompt_len=1, output_len=1)
    with pytest.raises(AttributeError):
        spec.output_len = 2  # type: ignore[misc]


def test_jsonl_trace_keeps_arrival_order_and_is_not_cycled(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    rows = [(2.5, "c"), (0.0, "a"), (1.0, "b"), (1.0, "b2")]
    path.write_text("".join(json.dumps({"prompt": p, "output_len": 3, "arrival_s": t}) + "\n" for t, p in rows))
    wl = parse_workload(f"jsonl:{path}", seed=7)
    assert wl.timed and wl.describe()["timed"] is True
    reqs = wl.requests(4)
    assert [(r.arrival_s, r.prompt) for r in reqs] == [(0.0, "a"), (1.0, "b"), (1.0, "b2"), (2.5, "c")]
    assert parse_workload(f"jsonl:{path}", seed=99).requests(4) == reqs  # the seed does not shuffle a trace
    with pytest.raises(UsageError, match="has 4 requests, 5 were asked for"):
        wl.requests(5)
    plain = wl.without_times()  # what a study uses: a dataset, shuffled by the seed and cycled
    assert not plain.timed and "timed" not in plain.describe()
    assert len(plain.requests(9)) == 9 and all(r.arrival_s is None for r in plain.requests(9))
    assert sorted(r.prompt for r in plain.requests(4)) == ["a", "b", "b2", "c"]


@pytest.mark.parametrize("lines, words", [
    (['{"prompt": "x", "output_len": 2, "arrival_s": -1}'], "arrival_s"),
    (['{"prompt": "x", "output_len": 2, "arrival_s": "soon"}'], "arrival_s"),
    (['{"prompt": "x", "output_len": 2, "arrival_s": true}'], "arrival_s"),
    (['{"prompt": "x", "output_len": 2, "arrival_s": 1}', '{"prompt": "y", "output_len": 2}'],
     "1 of 2 records have 'arrival_s'"),
])
def test_bad_trace_records(tmp_path: Path, lines: list[str], words: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=words) as info:
        parse_workload(f"jsonl:{path}")
    assert "\n" not in str(info.value)
