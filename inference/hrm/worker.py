"""The inference worker's HTTP face: the seed's /generate and /loglikelihood, OpenAI /v1/completions and
/v1/chat/completions (with SSE streaming), /v1/models, /healthz, /readyz, /metrics.

One model per process. Torch runs on one scheduler thread that owns the engine; the event loop
only parses, validates and streams. Requests reach the thread through a queue; tokens come back
through ``loop.call_soon_threadsafe``. Shutdown stops taking requests and drains the ones in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from tokenizers import Tokenizer

from inference.hrm.engine import BatchEngine, QueueFull, SamplingParams, Sequence
from inference.hrm.model import HRM

log = logging.getLogger(__name__)

MAX_PROMPTS = 64


class RequestError(Exception):
    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


@dataclass
class Limits:
    max_tokens: int = 1024
    max_batch: int = 16
    max_queue: int = 256


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float, *, low_open: bool = False,
            integer: bool = False) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise RequestError(422, name, f"{name} must be {'an integer' if integer else 'a number'}")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise RequestError(400, name, f"{name} must be in {bracket}{low:g}, {high:g}]")
    return value


def _strings(body: dict[str, Any], name: str, *, required: bool = True) -> list[str]:
    value = body.get(name)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RequestError(422, name, f"{name} must be a list of strings")
    return value


def sampling_from(body: dict[str, Any], limits: Limits, *, default_max: int = 128,
                  default_temperature: float = 0.7) -> SamplingParams:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else _strings(body, "stop", required=False)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(422, "seed", "seed must be an integer")
    return SamplingParams(
        max_tokens=_number(body, "max_tokens", min(default_max, limits.max_tokens), 1, limits.max_tokens,
                           integer=True),
        temperature=float(_number(body, "temperature", default_temperature, 0, 2)),
        top_p=float(_number(body, "top_p", 1.0, 0, 1, low_open=True)),
        seed=seed, stop=tuple(stops))


class Worker:
    def __init__(self, model: HRM, tokenizer: Tokenizer, name: str, eos_id: int | None, limits: Limits,
                 device: str = "cpu") -> None:
        self.model, self.tokenizer, self.name, self.limits, self.device = model, tokenizer, name, limits, device
        self.engine = BatchEngine(model, tokenizer, eos_id=eos_id, max_batch=limits.max_batch,
                                  max_queue=limits.max_queue, device=device,
                                  dtype=next(model.parameters()).dtype)
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.lock = threading.Lock()
        self.ready = False
        self.stopping = False
        self.in_flight = 0
        self.thread = threading.Thread(target=self._run, name="hrm-scheduler", daemon=True)
        self.registry = CollectorRegistry()
        self.requests = Counter("hrm_requests_total", "Requests.", ["route", "status"], registry=self.registry)
        self.tokens = Counter("hrm_generated_tokens_total", "Tokens generated.", registry=self.registry)
        self.latency = Histogram("hrm_request_seconds", "Request latency.", ["route"], registry=self.registry)

    # --- the scheduler thread -------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        torch.set_grad_enabled(False)
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

    def call(self, function: Any) -> asyncio.Future[Any]:
        """Run ``function`` on the scheduler thread; its result comes back as a future on this loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def run() -> None:
            try:
                result = function()
            except Exception as exc:  # handed back to the request that asked
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

        self.inbox.put(run)
        return future

    def generate(self, prompt: str, params: SamplingParams) -> tuple[Sequence, asyncio.Queue[str | None]]:
        """Start one generation; pieces of text arrive on the queue, then None when it ends."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        sequence = Sequence(self.tokenizer.encode(prompt).ids or [0], params,
                            on_token=lambda _s, text: loop.call_soon_threadsafe(pieces.put_nowait, text))
        sequence.on_done = lambda: loop.call_soon_threadsafe(pieces.put_nowait, None)  # type: ignore[attr-defined]
        return sequence, pieces

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Sum of the log-probabilities of each continuation given its prompt, teacher-forced (one forward)."""
        out = []
        for prompt, continuation in pairs:
            # Encoded apart and joined (as lm-eval does): the continuation's tokens are exactly
            # its own, never a merge across the boundary that would blur which part is scored.
            context = self.tokenizer.encode(prompt).ids or [self.engine.eos_id or 0]  # something to condition on
            target = self.tokenizer.encode(continuation).ids
            tokens = torch.tensor([(context + target)[-self.model.config.max_seq_len:]], device=self.device)
            logits, _ = self.model(tokens)
            logprobs = torch.log_softmax(logits[0].double(), dim=-1)
            start = tokens.shape[1] - len(target)
            total = sum(float(logprobs[start + i - 1, token]) for i, token in enumerate(target))
            out.append(total)
        return out

    # --- HTTP ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024, middlewares=[self._middleware])
        app.add_routes([
            web.post("/generate", self.handle_generate), web.post("/loglikelihood", self.handle_loglikelihood),
            web.post("/v1/completions", self.handle_completions), web.get("/v1/models", self.handle_models),
            web.get("/healthz", self.handle_healthz), web.get("/readyz", self.handle_readyz),
            web.get("/metrics", self.handle_metrics),
        ])
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        if self.stopping and request.method == "POST":
            return web.json_response({"detail": "the worker is shutting down"}, status=503)
        self.in_flight += 1
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except RequestError as exc:
            status = exc.status
            return web.json_response({"detail": exc.message, "field": exc.field}, status=exc.status)
        except QueueFull as exc:
            status = 429
            return web.json_response({"detail": f"too many requests waiting: {exc}"}, status=429)
        finally:
            self.in_flight -= 1
            self.requests.labels(request.path, str(status)).inc()
            self.latency.labels(request.path).observe(time.perf_counter() - started)

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "body", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError(422, "body", "the body must be a JSON object")
        return body

    async def _complete(self, prompt: str, params: SamplingParams) -> tuple[str, Sequence]:
        sequence, pieces = self.generate(prompt, params)
        await self.call(lambda: self.engine.submit(sequence))
        while await pieces.get() is not None:
            pass
        self.tokens.inc(len(sequence.output))
        return sequence.text, sequence

    async def handle_generate(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        prompts = _strings(body, "prompts")
        if not prompts:
            raise RequestError(400, "prompts", "prompts must not be empty")
        if len(prompts) > MAX_PROMPTS:
            raise RequestError(400, "prompts", f"at most {MAX_PROMPTS} prompts per request")
        params = sampling_from(body, self.limits)
        results = await asyncio.gather(*(self._complete(p, params) for p in prompts))
        prompt_tokens = sum(len(s.prompt) for _, s in results)
        completion_tokens = sum(len(s.output) for _, s in results)
        return web.json_response({"completions": [text for text, _ in results], "usage": {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}})

    async def handle_loglikelihood(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        prompts, continuations = _strings(body, "prompts"), _strings(body, "continuations")
        if not prompts:
            raise RequestError(400, "prompts", "prompts must not be empty")
        if len(prompts) != len(continuations):
            raise RequestError(400, "continuations",
                               f"continuations ({len(continuations)}) must match prompts ({len(prompts)})")
        values = await self.call(lambda: self.loglikelihood(list(zip(prompts, continuations, strict=True))))
        return web.json_response({"ll": values})

    async def handle_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError(422, "prompt", "prompt must be a string")
        params = sampling_from(body, self.limits, default_max=16, default_temperature=1.0)
        created, ident = int(time.time()), f"cmpl-{uuid.uuid4().hex[:24]}"
        if not body.get("stream"):
            text, sequence = await self._complete(prompt, params)
            return web.json_response({"id": ident, "object": "text_completion", "created": created,
                                      "model": self.name, "choices": [{"index": 0, "text": text, "logprobs": None,
                                                                       "finish_reason": sequence.finish_reason}],
                                      "usage": {"prompt_tokens": len(sequence.prompt),
                                                "completion_tokens": len(sequence.output),
                                                "total_tokens": len(sequence.prompt) + len(sequence.output)}})
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        sequence, pieces = self.generate(prompt, params)
        await self.call(lambda: self.engine.submit(sequence))
        while (piece := await pieces.get()) is not None:
            chunk = {"id": ident, "object": "text_completion", "created": created, "model": self.name,
                     "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        final = {"id": ident, "object": "text_completion", "created": created, "model": self.name,
                 "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": sequence.finish_reason}],
                 "usage": {"prompt_tokens": len(sequence.prompt), "completion_tokens": len(sequence.output),
                           "total_tokens": len(sequence.prompt) + len(sequence.output)}}
        await response.write(b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n")
        return response

    async def handle_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.name, "object": "model",
                                                               "owned_by": "anvil"}]})

    async def handle_healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def handle_readyz(self, request: web.Request) -> web.Response:
        if self.ready and not self.stopping:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "loading" if not self.ready else "stopping"}, status=503)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"content-type": CONTENT_TYPE_LATEST})

    async def warm_up(self) -> None:
        """One tiny generation through the whole path; /readyz says ready only after it."""
        await self._complete("warm up", SamplingParams(max_tokens=1, temperature=0))
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
