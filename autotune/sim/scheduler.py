"""vLLM V1-style continuous batching in virtual time, shared by the sim server and ``predict``.

Each :meth:`Scheduler.step` builds one batch the way vLLM's V1 scheduler does:
  1. running requests in admission order take tokens from the ``max-num-batched-tokens`` budget
     (1 for a decode, the rest of the prompt for a chunked prefill); KV blocks are allocated as tokens grow;
     when blocks run out the newest running request is preempted (its KV is freed and it is recomputed later);
  2. if nothing was preempted, waiting requests are admitted (FCFS) while ``max-num-seqs``, the token budget
     and free blocks allow; without chunked prefill a prompt must fit the budget whole.
With async scheduling (vLLM's default) step k+1 is scheduled while step k runs, so a request that arrives while
the engine is busy misses the step already scheduled: it is admitted one step later than without.
The step's duration comes from :class:`~autotune.sim.perf.PerfModel`, the vision tower's time for the images of the
requests whose prefill starts in it included (vLLM runs the encoder in the step that schedules an image's tokens;
here all of a request's images go in its first prefill chunk's step). Requests live in numpy arrays indexed by
slot (no per-token Python objects); prefix caching and vLLM's caches of processed and encoded images are not
modelled (random prompts, distinct images).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from autotune.sim.perf import EncoderWork, PerfModel
from autotune.vllm_api.metrics import ITERATION_TOKENS_BOUNDS, steps_bucket

_STEP_BOUNDS = np.array(ITERATION_TOKENS_BOUNDS)

__all__ = ["SchedulerConfig", "StepResult", "DecodeRun", "Scheduler", "NO_IMAGES"]

NO_IMAGES = EncoderWork()


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    chunked_prefill: bool
    block_size: int
    num_blocks: int
    max_model_len: int


@dataclass(frozen=True)
class StepResult:
    duration_s: float
    emitted: np.ndarray  # slots that sampled one token this step
    first: np.ndarray  # bool per emitted slot: it was the request's first token
    finished: np.ndarray  # slots whose request completed this step (their slot is free again)
    num_tokens: int
    num_seqs: int
    # slots scheduled for the first time (vLLM's SCHEDULED event; a recompute after preemption does not count)
    started: np.ndarray


@dataclass(frozen=True)
class DecodeRun:
    """Several consecutive decode-only steps of the same running set (each slot emits once per step)."""

    durations_s: np.ndarray  # one per step
    slots: np.ndarray  # the running slots, each emitting one token every step
    finished: np.ndarray  # slots completed at the last step


class Scheduler:
    """Continuous batching over request slots. Not thread-safe; one owner drives ``add`` and ``step``."""

    def __init__(self, cfg: SchedulerConfig, perf: PerfModel, capacity: int = 256) -> None:
        self.cfg, self.perf = cfg, perf
        self._alloc(capacity)
        self.running = np.zeros(0, dtype=np.int64)  # slots in admission order
        self.waiting: deque[int] = deque()
        self.free_blocks = cfg.num_blocks
        self.num_preemptions_total = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.lag_steps = 1 if perf.async_scheduling else 0
        self.steps_scheduled = 0
        # steps by tokens scheduled, in vLLM's iteration-tokens buckets (the last: more than the largest bound)
        self.step_token_counts = np.zeros(len(_STEP_BOUNDS) + 1, dtype=np.int64)
        self.step_tokens_total = 0  # tokens over every step: the histogram's sum

    def steps_by_tokens(self) -> dict[str, int]:
        """The steps taken so far by tokens per step, as a scrape of vLLM's iteration-tokens histogram gives them
        (:func:`autotune.loadgen.promscrape.steps_by_tokens`)."""
        bounds = [*_STEP_BOUNDS.tolist(), float("inf")]
        return {steps_bucket(b): int(c) for b, c in zip(bounds, self.step_token_counts.tolist())}

    def _alloc(self, n: int) -> None:
        old = getattr(self, "prompt_len", None)
        size = 0 if old is None else len(old)
        def grow(name: str, dtype: type) -> None:
            arr = np.zeros(n, dtype=dtype)
            if old is not None:
                arr[:size] = getattr(self, name)
            setattr(self, name, arr)
        for name in ("prompt_len", "target_out", "computed", "out", "blocks", "added_at"):
            grow(name, np.int64)
        grow("encoder_total_s", np.float64)
        grow("encoder_longest_s", np.float64)
        self._free_slots = list(range(n - 1, size - 1, -1)) + list(getattr(self, "_free_slots", []))

    # -- requests ---------------------------------------------------------------------------------------------
    def add(self, prompt_len: int, max_out: int, encoder: EncoderWork = NO_IMAGES,
            after_step_start: bool = False) -> int:
        """Queue a request; returns its slot. ``prompt_len + max_out`` must not exceed max_model_len. ``encoder``:
        its images' vision tower work, charged to the step that schedules its first prefill chunk.

        Called between steps; ``after_step_start``: the request arrives just after the next step starts (a
        closed-loop client answering the last step's output), not during the step that just ended."""
        if not self._free_slots:
            self._alloc(2 * len(self.prompt_len))
        slot = self._free_slots.pop()
        self.prompt_len[slot], self.target_out[slot] = prompt_len, max(1, max_out)
        self.computed[slot] = self.out[slot] = self.blocks[slot] = 0
        self.encoder_total_s[slot], self.encoder_longest_s[slot] = encoder.total_s, encoder.longest_s
        self.added_at[slot] = self.steps_scheduled + int(after_step_start)
        self.waiting.append(slot)
        return slot

    def abort(self, slot: int) -> None:
        """Drop a request (client went away); frees its KV blocks and slot."""
        if slot in self.waiting:
            self.waiting.remove(slot)
        elif np.any(self.running == slot):
            self.running = self.running[self.running != slot]
        else:
            return
        self.free_blocks += int(self.blocks[slot])
        self.blocks[slot] = 0
        self._free_slots.append(slot)

    @property
    def has_work(self) -> bool:
        return bool(len(self.running) or self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.free_blocks / self.cfg.num_blocks if self.cfg.num_blocks else 0.0

    # -- one step ---------------------------------------------------------------------------------------------
    def step(self) -> StepResult | None:
        """Schedule and 'execute' one batch. None when nothing can be scheduled."""
        cfg, bs = self.cfg, self.cfg.block_size
        budget = cfg.max_num_batched_tokens
        run = self.running
        # Admissible: arrived before the step that was scheduled while the last one ran; an idle engine
        # (nothing running) schedules at once.
        self._admit_before = self.steps_scheduled - self.lag_steps + 1 if len(run) else 1 << 62
        self.steps_scheduled += 1
        sched_slots: list[np.ndarray] = []
        sched_n: list[np.ndarray] = []
        preempted = False
        if len(run):
            need = self.prompt_len[run] + self.out[run] - self.computed[run]
            if not cfg.chunked_prefill:  # a partial prefill cannot exist; a whole prompt waits for budget
                need = np.where(np.cumsum(need) <= budget, need, 0)
            prev = np.cumsum(need) - need
            n = np.minimum(need, np.maximum(budget - prev, 0))
            new_blocks = -(-(self.computed[run] + n) // bs) - self.blocks[run]
            new_blocks = np.where(n > 0, np.maximum(new_blocks, 0), 0)
            if int(new_blocks.sum()) <= self.free_blocks:  # fast path: everyone fits
                self.blocks[run] += new_blocks
                self.free_blocks -= int(new_blocks.sum())
                sched_slots.append(run)
                sched_n.append(n)
                budget -= int(n.sum())
            else:
                slots, ns, budget, preempted = self._schedule_running_slow(budget)
                sched_slots.append(slots)
                sched_n.append(ns)
        if not preempted:
            adm_slots, adm_n, budget = self._admit(budget)
            if len(adm_slots):
                sched_slots.append(adm_slots)
                sched_n.append(adm_n)
        slots = np.concatenate(sched_slots) if sched_slots else np.zeros(0, dtype=np.int64)
        ns = np.concatenate(sched_n) if sched_n else np.zeros(0, dtype=np.int64)
        mask = ns > 0
        slots, ns = slots[mask], ns[mask]
        if not len(slots):
            return None
        return self._execute(slots, ns)

    def decode_run(self, max_steps: int, max_end_s: float = float("inf")) -> DecodeRun | None:
        """Fast-forward through decode-only steps while the batch cannot change: nothing waiting to be
        admitted, every running request decoding, enough free KV blocks. Stops at the step where the first
        request finishes, after ``max_steps``, or after the last step that ends by ``max_end_s`` (an event: at
        least one step, which may then run past it). None when the next step is not such a step (use
        :meth:`step`)."""
        run, cfg = self.running, self.cfg
        n = len(run)
        if not n or n > cfg.max_num_batched_tokens or (self.waiting and n < cfg.max_num_seqs):
            return None
        out = self.out[run]
        total = self.prompt_len[run] + out
        computed = self.computed[run]
        if out.min() < 1 or np.any(total - computed != 1):
            return None
        k = int(min(max_steps, (self.target_out[run] - out).min()))
        bs = cfg.block_size
        blocks = self.blocks[run]
        def fits(steps: int) -> bool:
            return int((-(-(computed + steps) // bs) - blocks).clip(0).sum()) <= self.free_blocks
        if not fits(1):
            return None
        if not fits(k):
            lo, hi = 1, k
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
            k = lo
        durations = self.perf.decode_run_times_s(n, int(computed.sum()) + n, k)
        if max_end_s != float("inf"):
            k = max(1, int(np.searchsorted(np.cumsum(durations), max_end_s, side="right")))
            durations = durations[:k]
        self.steps_scheduled += k
        self.step_token_counts[int(np.searchsorted(_STEP_BOUNDS, n))] += k  # k steps of n decode tokens
        self.step_tokens_total += k * n
        new_blocks = (-(-(computed + k) // bs) - blocks).clip(0)
        self.blocks[run] += new_blocks
        self.free_blocks -= int(new_blocks.sum())
        self.computed[run] = computed + k
        self.out[run] = out + k
        self.generation_tokens_total += n * k
        finished = run[self.out[run] >= self.target_out[run]]
        if len(finished):
            self.free_blocks += int(self.blocks[finished].sum())
            self.blocks[finished] = 0
            self.running = run[self.out[run] < self.target_out[run]]
            self._free_slots.extend(int(s) for s in finished)
        return DecodeRun(durations, run.copy(), finished)

    def _schedule_running_slow(self, budget: int) -> tuple[np.ndarray, np.ndarray, int, bool]:
        """Request by request, preempting the newest running request whenever KV blocks run out."""
        bs = self.cfg.block_size
        order = list(self.running)
        done_slots: list[int] = []
        done_n: list[int] = []
        preempted = False
        i = 0
        while i < len(order) and budget > 0:
            s = order[i]
            need = int(self.prompt_len[s] + self.out[s] - self.computed[s])
            if not self.cfg.chunked_prefill and need > budget:
                i += 1
                continue
            n = min(need, budget)
            blocks = max(0, -(-(int(self.computed[s]) + n) // bs) - int(self.blocks[s]))
            while blocks > self.free_blocks:
                victim = order.pop()
                self._preempt(victim)
                preempted = True
                if victim == s:
                    break
            else:
                self.blocks[s] += blocks
                self.free_blocks -= blocks
                done_slots.append(s)
                done_n.append(n)
                budget -= n
                i += 1
                continue
            break
        self.running = np.asarray(order, dtype=np.int64)
        return np.asarray(done_slots, dtype=np.int64), np.asarray(done_n, dtype=np.int64), budget, preempted

    def _preempt(self, slot: int) -> None:
        self.free_blocks += int(self.blocks[slot])
        self.blocks[slot] = 0
        self.computed[slot] = 0  # recompute: prompt and the tokens generated so far are prefilled again
        self.waiting.appendleft(slot)
        self.num_preemptions_total += 1

    def _admit(self, budget: int) -> tuple[np.ndarray, np.ndarray, int]:
        cfg, bs = self.cfg, self.cfg.block_size
        slots: list[int] = []
        ns: list[int] = []
        room = cfg.max_num_seqs - len(self.running)
        while self.waiting and room > 0 and budget > 0:
            s = self.waiting[0]
            if self.added_at[s] >= self._admit_before:
                break
            need = int(self.prompt_len[s] + self.out[s] - self.computed[s])
            if not cfg.chunked_prefill and need > budget:
                break
            n = min(need, budget)
            blocks = -(-(int(self.computed[s]) + n) // bs) - int(self.blocks[s])
            if blocks > self.free_blocks:
                break
            self.waiting.popleft()
            self.blocks[s] += blocks
            self.free_blocks -= blocks
            slots.append(s)
            ns.append(n)
            budget -= n
            room -= 1
        if slots:
            self.running = np.concatenate([self.running, np.asarray(slots, dtype=np.int64)])
        return np.asarray(slots, dtype=np.int64), np.asarray(ns, dtype=np.int64), budget

    def _execute(self, slots: np.ndarray, ns: np.ndarray) -> StepResult:
        self.step_token_counts[int(np.searchsorted(_STEP_BOUNDS, int(ns.sum())))] += 1
        self.step_tokens_total += int(ns.sum())
        start = self.computed[slots]
        total = self.prompt_len[slots] + self.out[slots]
        end = start + ns
        sampled = end >= total
        new_prefill = start == 0
        encoder_s = 0.0
        fresh = slots[new_prefill & (self.out[slots] == 0)]
        if len(fresh):  # charged when the first prefill starts, not again on a recompute after preemption
            encoder_s = self.perf.encoder_step_s(float(self.encoder_total_s[fresh].sum()),
                                                 float(self.encoder_longest_s[fresh].max()))
        num_tokens = int(ns.sum())
        attn_ctx = float((ns * start).sum() + (ns * (ns + 1)).sum() / 2)
        kv_read = float(end.sum())
        decode_only = num_tokens == len(slots)
        duration = self.perf.step_time_s(num_tokens, len(slots), int(sampled.sum()), attn_ctx, kv_read,
                                         decode_only, encoder_s)
        self.computed[slots] = end
        emitted = slots[sampled]
        first = self.out[emitted] == 0
        self.prompt_tokens_total += int(self.prompt_len[emitted[first]].sum())
        self.out[emitted] += 1
        self.generation_tokens_total += len(emitted)
        fin_mask = self.out[emitted] >= self.target_out[emitted]
        finished = emitted[fin_mask]
        if len(finished):
            self.free_blocks += int(self.blocks[finished].sum())
            self.blocks[finished] = 0
            run = self.running  # a running request is finished exactly when it has all its tokens (no isin sort)
            self.running = run[self.out[run] < self.target_out[run]]
            self._free_slots.extend(int(s) for s in finished)
        return StepResult(duration, emitted, first, finished, num_tokens, len(slots), fresh)
