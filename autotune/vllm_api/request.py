"""Request bodies checked as vLLM checks them, and the prompt's token count.

vLLM's order: the body must be a JSON object (400), name a served model if it names one (404), hold a prompt
(400), and fit the context: prompt plus ``max_tokens`` at most ``max_model_len`` (400, vLLM's wording). Errors
are vLLM's JSON: ``{"error": {"message", "type", "param", "code"}}``.

Prompt strings are counted as whitespace-separated words (one token each), or len/4 when words are unusually
long (text without spaces); token-id prompts count exactly; an image counts what the served model's vision
tower makes of its size (read from a PNG's header; 512x512 when unreadable).
"""
from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["ApiError", "ServedModel", "GenerationRequest", "parse_request", "estimate_text_tokens", "png_size"]

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # vLLM's CompletionRequest default; chat defaults to the room left
UNREADABLE_IMAGE_PX = (512, 512)


class ApiError(Exception):
    """A request refused, as vLLM answers it. Raised before the response starts it is the HTTP error; raised by a
    token source mid-stream it becomes vLLM's in-stream error event."""

    def __init__(self, status: int, message: str, err_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status, self.message, self.err_type = status, message, err_type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.err_type, "param": None, "code": self.status}}


@dataclass(frozen=True)
class ServedModel:
    """What ``/v1/models`` lists and the request checks need."""

    names: tuple[str, ...]  # --served-model-name (vLLM takes several); a body naming none gets the first
    root: str  # the model path or id behind them
    max_model_len: int
    image_tokens: Callable[[int, int], int] | None = None  # (width_px, height_px) -> tokens; None: text only
    max_images: int | None = None  # --limit-mm-per-prompt's image count (vLLM: 999 unless set); None: no limit
    # the sim server's modelled seconds per wall second, on /version: a load generator paces its rate, ramp and
    # trace in the server's clock, the one its figures come in (None: a real server, on the wall clock)
    sim_time_scale: float | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """A request that passed the checks, as a token source sees it."""

    chat: bool
    model: str  # the served name asked for
    prompt_tokens: int
    images: tuple[tuple[int, int], ...]  # (width_px, height_px) of each image
    max_tokens: int
    ignore_eos: bool
    stream: bool
    include_usage: bool
    body: Mapping[str, Any]  # as received
    received_s: float  # time.perf_counter() when the request came in


def estimate_text_tokens(text: str) -> int:
    words = len(text.split())
    if words == 0 or len(text) / words > 12:  # no spaces to speak of: ~4 characters per token
        return max(1, math.ceil(len(text) / 4))
    return words


def png_size(data_url: str) -> tuple[int, int] | None:
    """Width and height from a PNG data URL's IHDR chunk (only the first bytes are decoded)."""
    _, _, payload = data_url.partition(",")
    try:
        head = base64.b64decode(payload[:44] + "=" * (-len(payload[:44]) % 4))
    except (ValueError, TypeError):
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def parse_request(raw: bytes, chat: bool, model: ServedModel, received_s: float) -> GenerationRequest:
    """Check a ``/v1/completions`` (``chat`` False) or ``/v1/chat/completions`` body; raise :class:`ApiError`."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    name = body.get("model")
    if name is None:
        name = model.names[0]
    elif name not in model.names:
        raise ApiError(404, f"The model `{name}` does not exist.", "NotFoundError")
    stream = bool(body.get("stream"))
    stream_options = body.get("stream_options")
    if stream_options and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.")
    if chat:
        prompt_tokens, images = _chat_prompt(body, model)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    else:
        prompt_tokens, images = _completion_prompt(body), ()
        max_tokens = body.get("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
    limit = model.max_model_len
    if prompt_tokens >= limit:
        raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, your request has "
                            f"{prompt_tokens} input tokens. Please reduce the length of the input messages.")
    if max_tokens is None:
        max_tokens = limit - prompt_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise ApiError(400, "max_tokens must be an integer")
    if max_tokens < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}.")
    if prompt_tokens + max_tokens > limit:
        raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in "
                            f"the completion). Please reduce the length of the messages or completion.")
    return GenerationRequest(
        chat=chat, model=name, prompt_tokens=prompt_tokens, images=images, max_tokens=max_tokens,
        ignore_eos=bool(body.get("ignore_eos")), stream=stream,
        include_usage=stream and isinstance(stream_options, dict) and bool(stream_options.get("include_usage")),
        body=body, received_s=received_s)


_INT_TYPES = {int, bool}  # what JSON integers (and true/false, which Python counts as ints) parse to


def _completion_prompt(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return estimate_text_tokens(prompt)
    if isinstance(prompt, list) and prompt and set(map(type, prompt)) <= _INT_TYPES and min(prompt) >= 0:
        return len(prompt)  # token ids (the type check in C: a 1,000-token prompt's check took 1 ms in Python)
    raise ApiError(400, "prompt must be a non-empty string or list of token ids (one prompt per request)")


def _chat_prompt(body: dict[str, Any], model: ServedModel) -> tuple[int, tuple[tuple[int, int], ...]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list")
    tokens, images = 0, []
    for msg in messages:
        if not isinstance(msg, dict):
            raise ApiError(400, "each message must be an object")
        content = msg.get("content")
        if isinstance(content, str):
            tokens += estimate_text_tokens(content)
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    tokens += estimate_text_tokens(str(part.get("text", "")))
                elif kind == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    images.append(png_size(url) or UNREADABLE_IMAGE_PX)
                else:
                    raise ApiError(400, f"unsupported content part type {kind!r}")
        elif content is not None:
            raise ApiError(400, "message content must be a string or a list of parts")
    if images:
        if model.image_tokens is None:
            raise ApiError(400, f"{model.root} is not a multimodal model; it cannot take images")
        if model.max_images is not None and len(images) > model.max_images:
            raise ApiError(400, f"At most {model.max_images} image(s) may be provided in one prompt.")
        try:
            tokens += sum(model.image_tokens(w, h) for w, h in images)
        except ValueError as e:  # a size the image processor refuses (an aspect ratio over 200)
            raise ApiError(400, str(e)) from None
    return max(1, tokens), tuple(images)
