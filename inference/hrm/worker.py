"""The inference worker: one engine, driven by one scheduler thread, used by the HTTP face (``server.py``).

Torch runs only on the scheduler thread, which owns the engine; the event loop parses,
validates and streams. Work reaches the thread through a queue; tokens come back through
``loop.call_soon_threadsafe``. Shutdown stops taking requests and drains the ones in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inference.hrm.checkpoint import EOS, CheckpointError
from inference.hrm.engine import Engine, SamplingParams, Sequence, TokenScore
from inference.hrm.errors import GenerationFailed, Unavailable
from inference.hrm.validation import Limits

T = TypeVar("T")
log = logging.getLogger(__name__)

# The chat template when a checkpoint brings none (``chat_template.jinja`` beside the weights).
# Jinja, as Hugging Face tokenizers store theirs, so lm-eval's remote tokenizer can render it too.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHAT_STOPS = ("<|user|>", "<|system|>", "<|assistant|>")


def load_engine(directory: Path, *, device: str, limits: Limits, autocast: str | None = None) -> Engine:
    """The engine a checkpoint directory calls for: an HRM checkpoint, or a transformers model (the baseline)."""
    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else None
    if config is None:
        raise CheckpointError(f"{directory} has no config.json")
    if "model_type" in config:  # a transformers directory
        from inference.hrm.baseline import HFEngine

        return HFEngine(directory, device=device, max_batch=limits.max_batch, max_queue=limits.max_queue)
    from inference.hrm.checkpoint import eos_id, load_checkpoint
    from inference.hrm.engine import BatchEngine

    model, tokenizer = load_checkpoint(directory, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast or "")
    return BatchEngine(model, tokenizer, eos_id=eos_id(tokenizer), max_batch=limits.max_batch,
                       max_queue=limits.max_queue, device=device, autocast=dtype)


def chat_template(directory: Path) -> str:
    path = directory / "chat_template.jinja"
    return path.read_text() if path.is_file() else CHAT_TEMPLATE


class Worker:
    def __init__(self, engine: Engine, name: str, limits: Limits, template: str = CHAT_TEMPLATE, *,
                 threads: int | None = None) -> None:
        self.threads = threads  # intra-op threads of the scheduler thread; None: torch's default
        self.engine, self.name, self.limits = engine, name, limits
        self.tokenizer = engine.tokenizer
        self.template_source = template
        environment = ImmutableSandboxedEnvironment()
        environment.globals["raise_exception"] = _refuse  # what Hugging Face templates call on a bad conversation
        self.template = environment.from_string(template)
        self.inbox: queue.Queue[Callable[[], None]] = queue.Queue()
        self.ready = False
        self.stopping = False
        self.in_flight = 0
        self.thread = threading.Thread(target=self._run, name="hrm-scheduler", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        # Set (on the event loop) if the scheduler thread ends: the worker cannot answer again.
        self.failure: BaseException | None = None
        self.died = asyncio.Event()
        # What the event loop waits on from the scheduler, failed at once should it die.
        self._calls: set[asyncio.Future[Any]] = set()
        self._generations: dict[int, tuple[Sequence, asyncio.Queue[str | None]]] = {}
        # Called on the event loop as each generation ends, however it ends (the server counts tokens).
        self.on_generation_done: Callable[[Sequence], None] = lambda sequence: None

    # --- the scheduler thread -------------------------------------------------------------
    def start(self) -> None:
        """Start the scheduler thread; called on the event loop that will serve requests."""
        self.loop = asyncio.get_running_loop()
        self.thread.start()

    def _run(self) -> None:
        try:
            torch.set_grad_enabled(False)
            if self.threads is not None:
                torch.set_num_threads(self.threads)
            while True:
                self._turn()
        except BaseException as exc:  # nothing answers requests any more: say so, and let the process end
            log.critical("the scheduler thread died", exc_info=exc)
            self._on_loop(self._die, exc)

    def _turn(self) -> None:
        """One pass of the scheduler: a task from the inbox, else one engine step."""
        try:
            item = self.inbox.get(timeout=0.5) if self.engine.idle else self.inbox.get_nowait()
        except queue.Empty:
            item = None
        if item is not None:
            try:
                item()
            except Exception:  # a task's own errors go back to its request (``call``); this is anything else
                log.exception("a scheduler task failed")
            return
        if self.engine.idle:
            return
        try:
            finished = self.engine.step()
        except Exception as exc:
            # The requests in the failed step get a 500; the engine drops them and goes on with the rest.
            log.exception("a decode step failed; failing the requests in it")
            finished = self.engine.abandon()
            for sequence in finished:
                if not sequence.finished:
                    sequence.error = f"generation failed: {type(exc).__name__}: {exc}"
        for sequence in finished:
            if sequence.on_done is not None:
                sequence.on_done(sequence)

    def _on_loop(self, function: Callable[..., None], *args: Any) -> None:
        """From the scheduler thread: run ``function`` on the event loop (gone, at shutdown: then nothing)."""
        if self.loop is None:
            return
        try:
            self.loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting
            pass

    def _die(self, exc: BaseException) -> None:
        self.failure, self.ready = exc, False
        gone = Unavailable(f"the worker's scheduler stopped ({type(exc).__name__}: {exc}); it is restarting")
        for future in list(self._calls):
            _settle(future, None, gone)
        for sequence, pieces in self._generations.values():
            sequence.error = gone.message
            pieces.put_nowait(None)
        self.died.set()

    def call(self, function: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``function`` on the scheduler thread; its result comes back as a future on this loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self.failure is not None:
            future.set_exception(Unavailable("the worker's scheduler stopped; it is restarting"))
            return future
        self._calls.add(future)
        future.add_done_callback(self._calls.discard)

        def run() -> None:
            try:
                result = function()
            except Exception as exc:  # handed back to the request that asked
                self._on_loop(_settle, future, None, exc)
            else:
                self._on_loop(_settle, future, result, None)

        self.inbox.put(run)
        return future

    async def run_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; raises ``Unavailable`` if the scheduler thread dies first."""
        stopped, died = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.died.wait())
        try:
            await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            died.cancel()
        if self.failure is not None:
            raise Unavailable(f"the scheduler thread died: {type(self.failure).__name__}: {self.failure}")

    # --- what requests ask of it ------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        # An empty prompt is conditioned on EOS: the model needs one token to start from.
        return self.tokenizer.encode(prompt).ids or [self.engine.eos_id or 0]

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.template.render(messages=messages, add_generation_prompt=True, eos_token=EOS)

    async def start_generation(self, prompt: list[int], params: SamplingParams
                               ) -> tuple[Sequence, asyncio.Queue[str | None]]:
        """Submit one generation; pieces of text arrive on the queue as they are made, then None.

        After the None, ``sequence.error`` says whether the engine failed it.
        """
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        key = id(pieces)

        def done(sequence: Sequence) -> None:
            self._generations.pop(key, None)
            pieces.put_nowait(None)
            self.on_generation_done(sequence)

        sequence = Sequence(prompt, params, on_token=lambda _s, text: self._on_loop(pieces.put_nowait, text),
                            on_done=lambda s: self._on_loop(done, s))
        # Known before it is submitted: it may finish before this coroutine runs again.
        self._generations[key] = (sequence, pieces)
        try:
            await self.call(lambda: self.engine.submit(sequence))
        except BaseException:
            self._generations.pop(key, None)
            raise
        return sequence, pieces

    async def complete(self, prompt: list[int], params: SamplingParams,
                       gone: Callable[[], bool] | None = None) -> Sequence:
        """One whole generation; ``gone`` says when its client has left, and the sequence is then cut short."""
        if params.max_tokens == 0:  # echo-only scoring asks for no new tokens
            sequence = Sequence(prompt, params)
            sequence.finish_reason = "length"
            return sequence
        sequence, pieces = await self.start_generation(prompt, params)
        try:
            while await pieces.get() is not None:
                if gone is not None and gone():
                    sequence.cancelled = True
        except asyncio.CancelledError:  # the server cancels a handler whose client left
            sequence.cancelled = True
            raise
        if sequence.error is not None:
            raise (Unavailable(sequence.error) if self.failure is not None else GenerationFailed(sequence.error))
        return sequence

    async def score(self, tokens: list[int], top: int = 0) -> list[TokenScore]:
        return await self.call(lambda: self.engine.score(tokens, top))

    async def loglikelihood(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """Sum of the log-probabilities of each continuation given its prompt, teacher-forced.

        Pairs come encoded apart (``encode_pair``), as lm-eval does: the continuation's tokens are
        exactly its own, never a merge across the boundary that would blur which part is scored.
        """
        out = []
        for context, target in pairs:
            scores = await self.score(context + target)
            out.append(sum(s.logprob for s in scores[len(scores) - len(target):]) if target else 0.0)
        return out

    def encode_pair(self, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
        return self.encode(prompt), self.tokenizer.encode(continuation).ids

    async def warm_up(self) -> None:
        """One tiny generation through the whole path; /readyz says ready only after it."""
        await self.complete(self.encode("warm up"), SamplingParams(max_tokens=1, temperature=0))
        self.ready = self.failure is None

    async def drain(self, timeout: float) -> None:
        self.stopping = True
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def _refuse(message: str) -> NoReturn:
    raise TemplateError(message)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
