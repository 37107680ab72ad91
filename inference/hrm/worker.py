"""The inference worker: one engine, driven by one scheduler thread, used by the HTTP face (``server.py``).

Torch runs only on the scheduler thread, which owns the engine; the event loop parses,
validates and streams. Work reaches the thread through a queue; tokens come back through
``loop.call_soon_threadsafe``. Shutdown stops taking requests and drains the ones in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inference.hrm.checkpoint import EOS, CheckpointError
from inference.hrm.engine import Engine, SamplingParams, Sequence, TokenScore
from inference.hrm.validation import Limits

T = TypeVar("T")

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
    def __init__(self, engine: Engine, name: str, limits: Limits, template: str = CHAT_TEMPLATE) -> None:
        self.engine, self.name, self.limits = engine, name, limits
        self.tokenizer = engine.tokenizer
        self.template_source = template
        self.template = ImmutableSandboxedEnvironment().from_string(template)
        self.inbox: queue.Queue[Callable[[], None]] = queue.Queue()
        self.ready = False
        self.stopping = False
        self.in_flight = 0
        self.thread = threading.Thread(target=self._run, name="hrm-scheduler", daemon=True)

    # --- the scheduler thread -------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        threads = os.environ.get("ANVIL_TORCH_THREADS")
        if threads:
            torch.set_num_threads(int(threads))
        while True:
            block = self.engine.idle
            try:
                item = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
            except queue.Empty:
                item = None
            if item is not None:
                item()
                continue
            if not self.engine.idle:
                for sequence in self.engine.step():
                    sequence.on_done()  # type: ignore[attr-defined]

    def call(self, function: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``function`` on the scheduler thread; its result comes back as a future on this loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def run() -> None:
            try:
                result = function()
            except Exception as exc:  # handed back to the request that asked
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

        self.inbox.put(run)
        return future

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
        """Submit one generation; pieces of text arrive on the queue as they are made, then None."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        sequence = Sequence(prompt, params,
                            on_token=lambda _s, text: loop.call_soon_threadsafe(pieces.put_nowait, text))
        sequence.on_done = lambda: loop.call_soon_threadsafe(pieces.put_nowait, None)  # type: ignore[attr-defined]
        await self.call(lambda: self.engine.submit(sequence))
        return sequence, pieces

    async def complete(self, prompt: list[int], params: SamplingParams) -> Sequence:
        if params.max_tokens == 0:  # echo-only scoring asks for no new tokens
            sequence = Sequence(prompt, params)
            sequence.finish_reason = "length"
            return sequence
        sequence, pieces = await self.start_generation(prompt, params)
        while await pieces.get() is not None:
            pass
        return sequence

    async def score(self, tokens: list[int], top: int = 0) -> list[TokenScore]:
        return await self.call(lambda: self.engine.score(tokens, top))

    async def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Sum of the log-probabilities of each continuation given its prompt, teacher-forced."""
        out = []
        for prompt, continuation in pairs:
            # Encoded apart and joined (as lm-eval does): the continuation's tokens are exactly
            # its own, never a merge across the boundary that would blur which part is scored.
            target = self.tokenizer.encode(continuation).ids
            scores = await self.score(self.encode(prompt) + target)
            out.append(sum(s.logprob for s in scores[len(scores) - len(target):]) if target else 0.0)
        return out

    async def warm_up(self) -> None:
        """One tiny generation through the whole path; /readyz says ready only after it."""
        await self.complete(self.encode("warm up"), SamplingParams(max_tokens=1, temperature=0))
        self.ready = True

    async def drain(self, timeout: float) -> None:
        self.stopping = True
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
