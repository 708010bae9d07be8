"""Per-request timestamps inside a vLLM 0.26.0 server, for issue #21 (where the TTFT goes between vLLM's arrival stamp
and its scheduler). Python imports this file at start-up in every process whose PYTHONPATH names this folder (the
API server and the engine core it spawns); with VLLM_TRACE_DIR set, it wraps a few vLLM functions once their modules
load and writes one tab-separated line per event to VLLM_TRACE_DIR/trace-PID.tsv:

    event  wall_s  monotonic_s  key  extra

Every process on one machine shares both clocks, so events of the two processes line up. ``key`` ties a request's
events together: its arrival stamp (``repr`` of vLLM's ``arrival_time``) in the API server until the engine request
exists, then both the stamp and the engine's request id. Events (in a request's order):

    H  the completions handler starts (FastAPI has parsed the body)          key: -, extra: the handler's id
    R  rendering and tokenization done (the stamp is taken as it starts)    key: stamp, extra: the handler's id
    A  AsyncLLM.add_request starts (the response stream began)              key: stamp, extra: external request id
    S  the request is handed to the engine core's socket / s: sent          key: engine request id, extra: stamp
    P  the engine core's input thread starts on it / p: done (a Request)    key: engine request id
    Q  the engine core's loop adds it to the scheduler (vLLM's QUEUED)       key: engine request id
    K  a step is scheduled                                                    key: step number, extra: tokens,new ids
    U  that step's output reaches the scheduler (the step ended)             key: step number
    F  a request's first token leaves the scheduler                          key: engine request id, extra: step
    O  the API server's output handler takes a first token                    key: engine request id
    W  the completions stream yields its first chunk                          key: stamp
With VLLM_TRACE_LOOP=1 also what keeps the API server busy (no key; many lines):
    T  the renderer's worker starts tokenizing a prompt / t: done
    B  the output handler starts on a step's outputs / b: done               extra: how many outputs
    Y  a completions stream yields a chunk

Read with ``python benchmarks/vllm_trace_table.py DIR``. Each wrapper costs a few microseconds; a patch that fails
(another vLLM version) writes an ``X`` line and leaves the function alone.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.abc
import os
import sys
import threading
import time

_DIR = os.environ.get("VLLM_TRACE_DIR")
_LOOP = os.environ.get("VLLM_TRACE_LOOP") == "1"
_lock = threading.Lock()
_file = None
_handler_id = contextvars.ContextVar("vllm_trace_handler", default="-")


def _emit(event: str, key: object = "-", extra: object = "") -> None:
    global _file
    wall, mono = time.time(), time.monotonic()
    with _lock:
        if _file is None:
            os.makedirs(_DIR, exist_ok=True)
            _file = open(os.path.join(_DIR, f"trace-{os.getpid()}.tsv"), "a", buffering=1, encoding="utf-8")
        _file.write(f"{event}\t{wall:.6f}\t{mono:.6f}\t{key}\t{extra}\n")


@contextlib.contextmanager
def _never_raising(event: str):
    """A tracing bug writes an X line instead of breaking the server."""
    try:
        yield
    except Exception as e:
        _emit("X", event, f"{type(e).__name__}: {e}")


def _stamp(engine_input: object) -> str:
    t = engine_input.get("arrival_time") if isinstance(engine_input, dict) else None
    return repr(t) if t is not None else "-"


# -- the API server ----------------------------------------------------------------------------------------------

def _patch_completion_serving(mod) -> None:
    cls = mod.OpenAIServingCompletion
    create, stream = cls.create_completion, cls.completion_stream_generator

    @functools.wraps(create)
    async def create_completion(self, request, raw_request=None):
        handler = f"h{id(request):x}"
        _handler_id.set(handler)
        _emit("H", "-", handler)
        return await create(self, request, raw_request)

    @functools.wraps(stream)
    async def completion_stream_generator(self, request, engine_inputs, *args, **kwargs):
        first = True
        async for chunk in stream(self, request, engine_inputs, *args, **kwargs):
            if first:
                _emit("W", _stamp(engine_inputs[0]) if engine_inputs else "-")
                first = False
            elif _LOOP:
                _emit("Y")
            yield chunk

    cls.create_completion, cls.completion_stream_generator = create_completion, completion_stream_generator


def _patch_renderer(mod) -> None:
    cls = mod.BaseRenderer
    render = cls.render_cmpl_async

    @functools.wraps(render)
    async def render_cmpl_async(self, *args, **kwargs):
        out = await render(self, *args, **kwargs)
        for engine_input in out:
            _emit("R", _stamp(engine_input), _handler_id.get())
        return out

    cls.render_cmpl_async = render_cmpl_async
    if _LOOP:
        tokenize = cls._tokenize_prompt

        @functools.wraps(tokenize)
        def _tokenize_prompt(self, *args, **kwargs):
            _emit("T")
            try:
                return tokenize(self, *args, **kwargs)
            finally:
                _emit("t")

        cls._tokenize_prompt = _tokenize_prompt


def _patch_async_llm(mod) -> None:
    cls = mod.AsyncLLM
    add = cls.add_request

    @functools.wraps(add)
    async def add_request(self, request_id, prompt, *args, **kwargs):
        _emit("A", _stamp(prompt), request_id)
        return await add(self, request_id, prompt, *args, **kwargs)

    cls.add_request = add_request


def _patch_core_client(mod) -> None:
    cls = mod.AsyncMPClient
    send = cls.add_request_async

    @functools.wraps(send)
    async def add_request_async(self, request):
        _emit("S", request.request_id, repr(request.arrival_time))
        await send(self, request)
        _emit("s", request.request_id)

    cls.add_request_async = add_request_async


def _patch_output_processor(mod) -> None:
    cls = mod.OutputProcessor
    process = cls.process_outputs
    seen: set[str] = set()

    @functools.wraps(process)
    def process_outputs(self, engine_core_outputs, *args, **kwargs):
        with _never_raising("O"):
            for out in engine_core_outputs:
                if out.request_id not in seen and out.new_token_ids:
                    seen.add(out.request_id)
                    _emit("O", out.request_id)
        if not _LOOP:
            return process(self, engine_core_outputs, *args, **kwargs)
        _emit("B", "-", len(engine_core_outputs))
        try:
            return process(self, engine_core_outputs, *args, **kwargs)
        finally:
            _emit("b")

    cls.process_outputs = process_outputs


# -- the engine core ---------------------------------------------------------------------------------------------

def _patch_engine_core(mod) -> None:
    cls = mod.EngineCore
    preprocess, add = cls.preprocess_add_request, cls.add_request

    @functools.wraps(preprocess)
    def preprocess_add_request(self, request):
        _emit("P", request.request_id, repr(request.arrival_time))
        out = preprocess(self, request)
        _emit("p", request.request_id)
        return out

    @functools.wraps(add)
    def add_request(self, request, *args, **kwargs):
        _emit("Q", request.request_id)
        return add(self, request, *args, **kwargs)

    cls.preprocess_add_request, cls.add_request = preprocess_add_request, add_request


def _patch_scheduler(mod) -> None:
    cls = mod.Scheduler
    schedule, update = cls.schedule, cls.update_from_output
    steps: dict[int, int] = {}
    seen: set[str] = set()
    counter = [0]

    @functools.wraps(schedule)
    def schedule_(self, *args, **kwargs):
        out = schedule(self, *args, **kwargs)
        counter[0] += 1
        steps[id(out)] = counter[0]
        with _never_raising("K"):
            new_ids = ",".join(r.req_id for r in out.scheduled_new_reqs)
            _emit("K", counter[0], f"{out.total_num_scheduled_tokens}:{new_ids}")
        return out

    @functools.wraps(update)
    def update_from_output(self, scheduler_output, *args, **kwargs):
        step = steps.pop(id(scheduler_output), 0)
        _emit("U", step)
        result = update(self, scheduler_output, *args, **kwargs)
        with _never_raising("F"):
            for outputs in (result or {}).values():
                for out in outputs.outputs:
                    if out.request_id not in seen and out.new_token_ids:
                        seen.add(out.request_id)
                        _emit("F", out.request_id, step)
        return result

    cls.schedule, cls.update_from_output = schedule_, update_from_output


_PATCHES = {
    "vllm.entrypoints.openai.completion.serving": _patch_completion_serving,
    "vllm.renderers.base": _patch_renderer,
    "vllm.v1.engine.async_llm": _patch_async_llm,
    "vllm.v1.engine.core_client": _patch_core_client,
    "vllm.v1.engine.output_processor": _patch_output_processor,
    "vllm.v1.engine.core": _patch_engine_core,
    "vllm.v1.core.sched.scheduler": _patch_scheduler,
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds the named modules with the other finders and patches each once its code has run."""

    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            try:
                _PATCHES[name](module)
                _emit("patched", name)
            except Exception as e:  # another vLLM version: trace less, serve as usual
                _emit("X", name, f"{type(e).__name__}: {e}")

        spec.loader.exec_module = exec_module
        return spec


if _DIR:
    sys.meta_path.insert(0, _PatchAfterImport())
