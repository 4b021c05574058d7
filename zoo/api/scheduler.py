"""Continuous batching: one thread owns the model; requests wait in a bounded queue and join the running batch at
the next step boundary, after their prefill; finished or abandoned rows leave at the next one.

A short request never waits for a long one to finish, only for the steps in between (one token of every row, plus
the prefill of whoever joins). The HTTP side talks to the thread through `Job`s: `submit` queues one, the thread
posts its text pieces onto the job's asyncio queue (thread-safe, through the server's event loop), and `cancel`
(a timeout, a client gone) makes its row leave at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Callable

from zoo.api.config import ServeConfig
from zoo.api.metrics import Metrics
from zoo.api.protocol import ApiError
from zoo.errors import ZooError
from zoo.label_bias import add_bias
from zoo.serving.engine import Batch, Row, Sampling, sample

log = logging.getLogger("zoo.serve")
PREFILL_TOKENS = 4096  # prompt tokens prefilled between two decode steps at most (one prompt always joins)
RETRY_AFTER_S = 1


class Job:
    """One request in the scheduler: its batch row, the metrics label of its route, and its event queue."""

    def __init__(self, row: Row, route: str, loop: asyncio.AbstractEventLoop):
        self.row, self.route, self.loop = row, route, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.retired = False
        self.arrived = time.monotonic()
        self.first_token_at: float | None = None

    def post(self, kind: str, value) -> None:
        """From the scheduler thread: `("text", str)`, `("done", finish_reason)` or `("error", ApiError)`."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class Scheduler:
    def __init__(self, load_runtime: Callable, config: ServeConfig, metrics: Metrics,
                 on_load_failed: Callable[[], None] | None = None):
        self.load_runtime, self.config, self.metrics, self.on_load_failed = load_runtime, config, metrics, \
            on_load_failed
        self.runtime = None
        self.has_router = False
        self.load_failed = False
        self._waiting: deque[Job] = deque()
        self._in_flight = 0  # waiting + in the batch: bounded by max_batch + max_queue
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._route_lock = threading.Lock()
        self._token_lock = threading.Lock()  # a fast tokenizer must not be used from two threads at once

    @property
    def ready(self) -> bool:
        return self.runtime is not None

    # lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, daemon=True, name="zoo-scheduler")
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.runtime is not None:  # the base is shared in this process: give it back without adapters
            self.runtime.close()

    def _main(self) -> None:
        try:
            self._load()
        except Exception:  # the server log gets the details; clients get 503 from /health
            log.exception("zoo serve: loading the model failed")
            self.load_failed = True
            if self.on_load_failed:
                self.on_load_failed()
            return
        self._loop()

    def _load(self) -> None:
        runtime = self.load_runtime()
        runtime.load_all()
        if (runtime.zoo.router_dir / "router.json").exists():
            try:
                runtime.router  # noqa: B018 -- load it now, not on the first `auto` request
                self.has_router = True
            except ZooError as e:  # a stale or damaged router: serve the adapters by name
                log.warning("zoo serve: no `auto` model: %s", e)
        self.batch = Batch(runtime)
        self.runtime = runtime
        log.info("zoo serve: ready with adapters %s", ", ".join(runtime.adapters) or "(none)")

    # request side (any thread) -----------------------------------------------------------------------------
    def route(self, text: str) -> dict:
        with self._route_lock:
            return self.runtime.route([text])[0]

    def encode(self, messages: list[dict] | None = None, prompt: str | None = None) -> list[int]:
        """Prompt ids: chat messages through the base's chat template, a completion prompt as plain text."""
        tok = self.runtime.tokenizer
        with self._token_lock:
            if messages is None:
                return list(tok(prompt, add_special_tokens=True)["input_ids"])
            if not getattr(tok, "chat_template", None):
                return list(tok("\n".join(m["content"] for m in messages) + "\n")["input_ids"])
            out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(out["input_ids"] if hasattr(out, "keys") else out)

    def decode(self, tokens: list[int]) -> str:
        with self._token_lock:
            return self.runtime.tokenizer.decode(tokens, skip_special_tokens=True)

    def submit(self, prompt_ids: list[int], adapter: str, sampling: Sampling, route: str) -> Job:
        """Queue a request (429 when `max_batch + max_queue` are already in flight)."""
        eos = {self.runtime.tokenizer.eos_token_id}
        job = Job(Row(prompt_ids, adapter, sampling, eos), route, asyncio.get_running_loop())
        job.row.tag = job
        with self._cond:
            if self._in_flight >= self.config.max_batch + self.config.max_queue:
                raise ApiError(429, "the server is busy: too many requests in flight, retry shortly",
                               type="rate_limit_error", code="queue_full",
                               headers={"Retry-After": str(RETRY_AFTER_S)})
            self._in_flight += 1
            self._waiting.append(job)
            self.metrics.queue.set(len(self._waiting))
            self._cond.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        """Free the job's row (or queue place) at the next step; a finished job is left alone."""
        with self._cond:
            job.cancelled = True
            self._cond.notify_all()

    # scheduler thread --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        import torch

        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self.batch.rows:
                    self._cond.wait()
                if self._stopping:
                    return
                joining = self._admit()
            try:
                with self.runtime.lock, torch.inference_mode():
                    self._relayout(joining)
                    if self.batch.rows:
                        self._step()
            except Exception:  # a bug or an out-of-memory: fail the batch's requests, keep serving
                log.exception("zoo serve: a decode step failed")
                self._fail_batch(joining)

    def _admit(self) -> list[Job]:
        """Jobs leaving the queue for the batch (under `_cond`): as many as there are free rows, within the
        prefill budget; cancelled ones are dropped here."""
        joining, tokens = [], 0
        free = self.config.max_batch - len(self.batch.rows)
        while self._waiting and len(joining) < free:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                self._retire(job)
                continue
            if joining and tokens + len(job.row.prompt_ids) > PREFILL_TOKENS:
                break
            joining.append(self._waiting.popleft())
            tokens += len(job.row.prompt_ids)
        self.metrics.queue.set(len(self._waiting))
        return joining

    def _relayout(self, joining: list[Job]) -> None:
        keep = [r for r in self.batch.rows if r.finish_reason is None and not r.tag.cancelled]
        for row in self.batch.rows:
            if row.finish_reason is None and row.tag.cancelled:
                self._retire(row.tag)
        if joining or len(keep) != len(self.batch.rows):
            self.batch.relayout(keep, [job.row for job in joining])
        self.metrics.running.set(len(self.batch.rows))

    def _step(self) -> None:
        rows = self.batch.rows
        self.metrics.batch.observe(len(rows))
        logits = add_bias(self.batch.step(), [r.adapter for r in rows], self.runtime.logit_biases)
        tokens = sample(logits, rows)
        now = time.monotonic()
        for row, token in zip(rows, tokens):
            job = row.tag
            text = row.accept(token, self.decode)
            if job.first_token_at is None:
                job.first_token_at = now
                self.metrics.ttft.observe(now - job.arrived)
            if text:
                job.post("text", text)
            if row.finish_reason is not None:
                job.post("done", row.finish_reason)
                self.metrics.latency.observe(now - job.arrived)
                self._retire(job)

    def _retire(self, job: Job) -> None:
        """A job leaves for good (done, cancelled or failed): its place in flight is free, its tokens counted."""
        with self._cond:
            if job.retired:
                return
            job.retired = True
            self._in_flight -= 1
        self.metrics.prompt_tokens.labels(job.route).inc(len(job.row.prompt_ids))
        self.metrics.completion_tokens.labels(job.route).inc(len(job.row.tokens))

    def _fail_batch(self, joining: list[Job]) -> None:
        error = ApiError(500, "the server failed while generating this answer; retry, or report it if it persists",
                         type="server_error", code="internal_error")
        stuck = {id(r.tag): r.tag for r in self.batch.rows if r.finish_reason is None}
        stuck.update({id(j): j for j in joining})
        for job in stuck.values():
            if not job.cancelled:
                job.post("error", error)
            self._retire(job)
        self.batch = Batch(self.runtime)
        self.metrics.running.set(0)
