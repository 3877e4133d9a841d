"""Request batching for the server: concurrent requests gathered for a few milliseconds, generated as one batch.

Each request keeps its own settings inside the shared batch: a logits processor samples every row with its
own temperature, top-p and seed (greedy rows stay argmax), and a stopping criterion reads each new token,
streams the row's text to its request as it grows, and stops the row at its end-of-turn token, one of its
stop strings, its `max_tokens`, or when the client went away. The batch ends when its last row does; the
requests that arrived meanwhile form the next one. The wait queue is bounded: a full queue is `QueueFull`
(a server answers 503), never unbounded memory.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from tunelab.inference.engine import GenerationEngine, complete_end

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The scheduler's wait queue is full: try again shortly."""


@dataclass
class Finished:
    """The last event of a request."""

    finish_reason: str  # "stop" (end of turn or a stop string), "length" (max_tokens), "cancelled" or "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


@dataclass
class GenerationRequest:
    """One prompt and its own settings. `sink` receives text pieces (str) and then one `Finished`, called from
    the generation thread; the text pieces joined are the whole completion."""

    prompt_ids: list[int]
    max_tokens: int
    sink: Callable[[str | Finished], None]
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """The client went away: the row stops at its next token."""
        self.cancelled.set()


class _Row:
    """A request's progress inside a running batch: its tokens, the text already sent, why it stopped."""

    def __init__(self, request: GenerationRequest, tokenizer, device):
        self.request = request
        self.tokenizer = tokenizer
        self.tokens: list[int] = []  # the reply's tokens (an end-of-turn token is counted, not kept)
        self.generated = 0
        self.sent = 0  # characters of the decoded text already sent
        self.done = False
        self.generator = None
        if request.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(request.seed if request.seed is not None else torch.seed())

    def _emit(self, text: str) -> None:
        if text:
            self.request.sink(text)

    def finish(self, reason: str, error: str | None = None) -> None:
        self.done = True
        self.request.sink(Finished(reason, len(self.request.prompt_ids), self.generated, error))

    def step(self, token: int, stop_ids: set[int]) -> None:
        """Take the row's next token: send the text it completes, or stop the row."""
        request = self.request
        if request.cancelled.is_set():
            return self.finish("cancelled")
        self.generated += 1
        if token in stop_ids:  # end of turn: what was held back is the reply's end
            self._emit(self._text()[self.sent:])
            return self.finish("stop")
        self.tokens.append(token)
        text = self._text()
        cut = min((i for i in (text.find(s, max(0, self.sent - len(s) + 1)) for s in request.stop) if i >= 0),
                  default=-1)
        if cut >= 0:  # a stop string: the reply ends before it, the stop string itself is not sent
            self._emit(text[self.sent:cut])
            return self.finish("stop")
        if self.generated >= request.max_tokens:
            return self.finish_at_length()
        safe = len(text) - _held_back(text, request.stop)
        if safe > self.sent:
            self._emit(text[self.sent:safe])
            self.sent = safe

    def finish_at_length(self) -> None:
        """Cut at max_tokens: send the rest, without the first bytes of a character that never got its last."""
        end = complete_end(self.tokenizer, self.tokens)
        text = self.tokenizer.decode(self.tokens[:end], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        self._emit(text[self.sent:])
        self.finish("length")

    def _text(self) -> str:
        # Decoded whole each step: a multi-byte character split over tokens shows as U+FFFD until complete.
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` not to send yet: an unfinished character, or the start of a stop string."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return max(hold, len(text) - len(text.rstrip("\ufffd")))


class _RowSampler:
    """Logits processor: a sampling row draws its token with its own temperature, top-p and generator, and
    leaves only that token possible, so `generate`'s argmax picks it; greedy rows are left alone."""

    def __init__(self, rows: list[_Row]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for i, row in enumerate(self.rows):
            if row.generator is None or row.done:
                continue
            probs = torch.softmax(scores[i].float() / row.request.temperature, dim=-1)
            if row.request.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(-1) - sorted_probs > row.request.top_p  # keeps at least the top one
                probs = probs.scatter(0, order[outside], 0.0)
            token = torch.multinomial(probs, 1, generator=row.generator)
            scores[i] = float("-inf")
            scores[i, token] = 0.0
        return scores


class _RowStopper:
    """Stopping criterion: hands each row its newest token and reports which rows are done."""

    def __init__(self, rows: list[_Row], stop_ids: set[int]):
        self.rows = rows
        self.stop_ids = stop_ids

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        newest = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, newest):
            if not row.done:
                row.step(token, self.stop_ids)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


class BatchScheduler:
    """A worker thread that gathers waiting requests into batches and generates each batch in one go."""

    def __init__(self, engine: GenerationEngine, max_batch: int = 16, gather_ms: float = 10.0, max_queue: int = 64):
        self.engine = engine
        self.max_batch = max_batch
        self.gather_seconds = gather_ms / 1000
        self._waiting: queue.Queue[GenerationRequest] = queue.Queue(maxsize=max_queue)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, name="tunelab-batching", daemon=True)
        self.running = 0
        """Requests in the batch being generated now."""
        self.batches = 0

    @property
    def waiting(self) -> int:
        return self._waiting.qsize()

    def start(self) -> "BatchScheduler":
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking batches; the running batch finishes first, waiting requests end as cancelled."""
        self._stopping.set()
        self._thread.join(timeout)
        while True:
            try:
                request = self._waiting.get_nowait()
            except queue.Empty:
                break
            request.sink(Finished("cancelled", len(request.prompt_ids), 0, "the server is shutting down"))

    def submit(self, request: GenerationRequest) -> None:
        """Queue `request`; QueueFull when the queue is full (the caller answers 'try again later')."""
        if self._stopping.is_set():
            raise QueueFull("the server is shutting down")
        try:
            self._waiting.put_nowait(request)
        except queue.Full:
            raise QueueFull(f"{self._waiting.maxsize} requests are already waiting") from None

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                first = self._waiting.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.gather_seconds
            while len(batch) < self.max_batch:  # a few ms for concurrent requests to join this batch
                try:
                    batch.append(self._waiting.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            live = []
            for request in batch:
                if request.cancelled.is_set():
                    request.sink(Finished("cancelled", len(request.prompt_ids), 0))
                else:
                    live.append(request)
            if live:
                self._run_batch(live)

    def _run_batch(self, batch: list[GenerationRequest]) -> None:
        """Generate one batch; an error ends each of its requests with that error and the worker goes on."""
        engine = self.engine
        rows = [_Row(request, engine.tokenizer, engine.device) for request in batch]
        self.running = len(rows)
        try:
            from transformers import LogitsProcessorList, StoppingCriteriaList

            engine.generate_batch_ids([r.prompt_ids for r in batch], max(r.max_tokens for r in batch),
                                      logits_processor=LogitsProcessorList([_RowSampler(rows)]),
                                      stopping_criteria=StoppingCriteriaList([_RowStopper(rows, set(engine.stop_token_ids))]))
            for row in rows:  # generate stops at its own max_new_tokens too; no row is left open
                if not row.done:
                    row.finish_at_length()
        except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the server
            log.exception("generation failed for a batch of %d requests", len(rows))
            for row in rows:
                if not row.done:
                    row.finish("error", f"generation failed: {type(exc).__name__}: {exc}")
        finally:
            self.running = 0
            self.batches += 1


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The text a chat model continues for `messages`: its chat template, or a plain transcript without one."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"
