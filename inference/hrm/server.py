"""The worker's HTTP face: the seed's /generate and /loglikelihood; OpenAI /v1/completions (echo and
logprobs included, so lm-eval's ``local-completions`` works) and /v1/chat/completions, both with SSE;
/v1/models; the vLLM-style /tokenizer_info, /tokenize and /detokenize (lm-eval's remote tokenizer);
/healthz, /readyz, /metrics.

Errors are raised as ``inference.hrm.errors.WorkerError`` and rendered once, in the middleware, in
the route's dialect: ``{"detail", "field"}`` on the seed's routes, OpenAI's ``{"error": {...}}`` on
the OpenAI and vLLM routes. Anything else a handler raises is logged and answered as a JSON 500.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from jinja2 import TemplateError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from inference.hrm.checkpoint import EOS
from inference.hrm.engine import ContextExceeded, QueueFull, SamplingParams, Sequence, TokenScore
from inference.hrm.errors import (
    Busy,
    Dialect,
    GenerationFailed,
    HTTPError,
    RequestError,
    Unavailable,
    WorkerError,
    dialect_of,
)
from inference.hrm.validation import (
    CONTEXT_CODE,
    MAX_LOGPROBS,
    fit_max_tokens,
    flag,
    number,
    openai_prompts,
    requested_max_tokens,
    sampling_from,
    seed_prompts,
    strings,
    token_ids,
    truncate_left,
)
from inference.hrm.worker import CHAT_STOPS, Worker

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)
GENERATE_DEFAULT_MAX_TOKENS = 128  # the seed's /generate default; the OpenAI routes default to the context


class Server:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.registry = CollectorRegistry()
        self.requests = Counter("hrm_requests_total", "Requests.", ["route", "status"], registry=self.registry)
        self.tokens = Counter("hrm_generated_tokens_total", "Tokens generated.", registry=self.registry)
        worker.on_generation_done = lambda sequence: self.tokens.inc(len(sequence.output))
        self.latency = Histogram("hrm_request_seconds", "Request latency.", ["route"], registry=self.registry)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024, middlewares=[self._middleware])
        app.add_routes([
            web.post("/generate", self.generate), web.post("/loglikelihood", self.loglikelihood),
            web.post("/v1/completions", self.completions), web.post("/v1/chat/completions", self.chat),
            web.get("/v1/models", self.models), web.get("/tokenizer_info", self.tokenizer_info),
            web.post("/tokenize", self.tokenize), web.post("/detokenize", self.detokenize),
            web.get("/healthz", self.healthz), web.get("/readyz", self.readyz), web.get("/metrics", self.metrics),
        ])
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 499  # the client went away before an answer: its handler was cancelled
        self.worker.in_flight += 1
        try:
            response = await self._answer(request, handler)
            status = response.status
            return response
        finally:
            self.worker.in_flight -= 1
            # Unmatched paths share one label: a scan of random paths must not grow the metrics without bound.
            route = request.path if request.match_info.route.resource is not None else "(unmatched)"
            self.requests.labels(route, str(status)).inc()
            elapsed = time.perf_counter() - started
            self.latency.labels(route).observe(elapsed)
            if request.method == "POST":  # one line per request: its id (Anvil's, when relayed), timing, tokens
                log.info("%s %s %s %.1fms tokens=%s id=%s", request.method, request.path, status, elapsed * 1000,
                         request.get("generated", "-"), request.headers.get("x-request-id", "-"))

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The handler's response, or what it raised in the route's dialect: always JSON, never HTML."""
        try:
            if self.worker.stopping and request.method == "POST":
                raise Unavailable("the worker is shutting down")
            return await handler(request)
        except WorkerError as exc:
            error = exc
        except QueueFull as exc:
            error = Busy(f"too many requests waiting: {exc}")
        except ContextExceeded as exc:  # the engine's own check, should a route's have missed a case
            error = RequestError(400, "prompt", str(exc), code=CONTEXT_CODE)
        except web.HTTPException as exc:  # an unknown path, a wrong method, a body over client_max_size
            if exc.status < 400:
                raise
            error = HTTPError(exc.status, exc.text or exc.reason)
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.path)
            error = WorkerError(f"internal error ({type(exc).__name__}); the worker logged it")
        return web.json_response(error.body(dialect_of(request.path)), status=error.status)

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        # ValueError: not JSON, not UTF-8, an integer past Python's digit limit; LookupError: an unknown
        # charset in the content type; RecursionError: arrays nested thousands deep.
        except (ValueError, LookupError, RecursionError):
            raise RequestError(400, "body", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError(422, "body", "the body must be a JSON object")
        return body

    def _fitted(self, prompt: list[int], params: SamplingParams, requested: int | None, *, default: int | None,
                prompt_field: str, tokens_field: str = "max_tokens", truncate: bool = False
                ) -> tuple[list[int], SamplingParams]:
        """The prompt (cut from the left when asked and needed) and ``params`` with the max_tokens it gets."""
        context, limit = self.worker.engine.max_seq_len, self.worker.limits.max_tokens
        if truncate:
            # Keep room for what was asked, else the route's default, else a quarter of the context.
            wanted = requested if requested is not None else (default if default is not None else context // 4)
            keep = context - max(1, min(wanted, limit, context - 1))
            prompt = prompt[-keep:]
        max_tokens = fit_max_tokens(len(prompt), requested, context=context, limit=limit, default=default,
                                    prompt_field=prompt_field, tokens_field=tokens_field)
        return prompt, dataclasses.replace(params, max_tokens=max_tokens)

    async def _complete(self, request: web.Request, prompt: list[int], params: SamplingParams) -> Sequence:
        sequence = await self.worker.complete(prompt, params, gone=lambda: _gone(request))
        request["generated"] = request.get("generated", 0) + len(sequence.output)
        return sequence

    # --- the seed's contract ----------------------------------------------------------------
    async def generate(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        prompts = seed_prompts(body)
        params = sampling_from(body)
        requested = requested_max_tokens(body, self.worker.limits)
        truncate = truncate_left(body)
        jobs = [self._fitted(prompt, params, requested, default=GENERATE_DEFAULT_MAX_TOKENS, prompt_field="prompts",
                             truncate=truncate) for prompt in (self.worker.encode(p) for p in prompts)]
        sequences = await asyncio.gather(*(self._complete(request, prompt, fitted) for prompt, fitted in jobs))
        return web.json_response({"completions": [s.text for s in sequences], "usage": _usage(sequences)})

    async def loglikelihood(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        prompts, continuations = seed_prompts(body), strings(body, "continuations")
        if len(prompts) != len(continuations):
            raise RequestError(400, "continuations",
                               f"continuations ({len(continuations)}) must match prompts ({len(prompts)})")
        pairs = [self.worker.encode_pair(p, c) for p, c in zip(prompts, continuations, strict=True)]
        context = self.worker.engine.max_seq_len
        for _, target in pairs:
            # The prompt may be cut from the left to fit; the continuation must keep one token before it.
            if len(target) > context - 1:
                raise RequestError(400, "continuations", f"a continuation of {len(target)} tokens does not fit "
                                                         f"the context of {context} tokens", code=CONTEXT_CODE)
        return web.json_response({"ll": await self.worker.loglikelihood(pairs)})

    # --- OpenAI -----------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        prompts = openai_prompts(body, self.worker.engine.vocab_size)
        echo, stream = flag(body, "echo"), flag(body, "stream")
        logprobs = body.get("logprobs")
        if logprobs is not None:
            logprobs = number(body, "logprobs", 0, 0, MAX_LOGPROBS, integer=True)
            if stream:
                raise RequestError(400, "logprobs", "logprobs are not available when streaming")
        if echo and stream:
            raise RequestError(400, "echo", "echo is not available when streaming")
        if stream and len(prompts) != 1:
            raise RequestError(400, "prompt", "streaming takes one prompt")
        params = sampling_from(body, default_temperature=1.0, logprobs=logprobs)
        requested = requested_max_tokens(body, self.worker.limits, allow_zero=echo)
        created, ident = int(time.time()), f"cmpl-{uuid.uuid4().hex[:24]}"
        truncate = truncate_left(body)
        jobs = [self._fitted(prompt, params, requested, default=None, prompt_field="prompt", truncate=truncate)
                for prompt in (self.worker.encode(p) for p in prompts)]
        if stream:
            prompt, fitted = jobs[0]
            return await self._stream(request, prompt, fitted, ident, created, "text_completion",
                                      chat=False, include_usage=_include_usage(body))
        sequences = await asyncio.gather(*(self._complete(request, prompt, fitted) for prompt, fitted in jobs))
        choices = []
        for index, sequence in enumerate(sequences):
            text = sequence.text
            choice: dict[str, Any] = {"index": index, "text": text, "logprobs": None,
                                      "finish_reason": sequence.finish_reason}
            if logprobs is not None or echo:
                scored = list(sequence.scores)
                prompt_scores: list[TokenScore | None] = []
                if echo:
                    prompt_scores = [None, *await self.worker.score(sequence.prompt, logprobs or 0)]
                    text = self.worker.tokenizer.decode(sequence.prompt) + text
                    choice["text"] = text
                if logprobs is not None:
                    choice["logprobs"] = self._logprobs(prompt_scores, sequence.prompt if echo else [], scored, text)
            choices.append(choice)
        return web.json_response({"id": ident, "object": "text_completion", "created": created,
                                  "model": self.worker.name, "choices": choices, "usage": _usage(sequences)})

    def _logprobs(self, prompt_scores: list[TokenScore | None], prompt: list[int], generated: list[TokenScore],
                  text: str) -> dict[str, Any]:
        """The legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset (echoed prompt first)."""
        decode = self.worker.tokenizer.decode
        tokens = [*prompt, *(s.token for s in generated)]
        scores = [*prompt_scores, *generated]
        pieces = [decode([token]) for token in tokens]
        offsets, at = [], 0
        for piece in pieces:
            offsets.append(min(at, len(text)))
            at += len(piece)
        return {"tokens": pieces,
                "token_logprobs": [s.logprob if s else None for s in scores],
                "top_logprobs": [{decode([t]): v for t, v in s.top.items()} if s else None for s in scores],
                "text_offset": offsets}

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(422, "messages", "messages must be a non-empty list")
        if body.get("tools"):
            raise RequestError(400, "tools", f"{self.worker.name} does not call tools")
        rendered = self._render(messages)
        stream = flag(body, "stream")
        params = sampling_from(body, default_temperature=1.0)
        params.stop = (*params.stop, *CHAT_STOPS)
        # Newer OpenAI clients send max_completion_tokens: the same limit under its new name.
        tokens_field = ("max_completion_tokens" if body.get("max_tokens") is None
                        and body.get("max_completion_tokens") is not None else "max_tokens")
        requested = requested_max_tokens(body, self.worker.limits, name=tokens_field)
        prompt, params = self._fitted(self.worker.encode(rendered), params, requested, default=None,
                                      prompt_field="messages", tokens_field=tokens_field,
                                      truncate=truncate_left(body))
        created, ident = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if stream:
            return await self._stream(request, prompt, params, ident, created, "chat.completion.chunk", chat=True,
                                      include_usage=_include_usage(body))
        sequence = await self._complete(request, prompt, params)
        return web.json_response({"id": ident, "object": "chat.completion", "created": created,
                                  "model": self.worker.name, "choices": [{
                                      "index": 0, "message": {"role": "assistant", "content": sequence.text},
                                      "finish_reason": sequence.finish_reason}],
                                  "usage": _usage([sequence])})

    def _render(self, messages: Any) -> str:
        """Chat messages through the checkpoint's chat template, ready to tokenize."""
        if not isinstance(messages, list) or not messages:
            raise RequestError(422, "messages", "messages must be a non-empty list")
        turns = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise RequestError(422, f"messages[{index}]", "each message needs a role")
            turns.append({"role": message["role"], "content": _content(message.get("content"), index)})
        try:
            return self.worker.render_chat(turns)
        except TemplateError as exc:  # a checkpoint's template may refuse a conversation (roles out of turn)
            raise RequestError(400, "messages", f"the chat template refused the messages: {exc}") from None

    async def _stream(self, request: web.Request, prompt: list[int], params: SamplingParams, ident: str,
                      created: int, kind: str, *, chat: bool, include_usage: bool) -> web.StreamResponse:
        sequence, pieces = await self.worker.start_generation(prompt, params)  # a full queue answers 429 first
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)

        def event(choice: dict[str, Any], **extra: Any) -> bytes:
            chunk = {"id": ident, "object": kind, "created": created, "model": self.worker.name,
                     "choices": [choice] if choice else [], **extra}
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        def error_event(error: WorkerError) -> bytes:
            return b"data: " + json.dumps(error.body(Dialect.OPENAI)).encode() + b"\n\n"

        # The status line has gone out: from here a failure is told as an error event, then [DONE], as vLLM does.
        try:
            if chat:
                await response.write(event({"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}))
            while (piece := await pieces.get()) is not None:
                choice = ({"index": 0, "delta": {"content": piece}, "finish_reason": None} if chat
                          else {"index": 0, "text": piece, "logprobs": None, "finish_reason": None})
                if _gone(request):
                    raise ConnectionResetError("the client went away")
                await response.write(event(choice))
            request["generated"] = len(sequence.output)
            if sequence.error is not None:
                await response.write(error_event(Unavailable(sequence.error) if self.worker.failure is not None
                                                 else GenerationFailed(sequence.error)))
            else:
                last = ({"index": 0, "delta": {}, "finish_reason": sequence.finish_reason} if chat
                        else {"index": 0, "text": "", "logprobs": None, "finish_reason": sequence.finish_reason})
                await response.write(event(last))
                if include_usage:
                    await response.write(event({}, usage=_usage([sequence])))
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError) as gone:
            # The client went away (a failed write, or the server cancelling this handler): nobody to
            # tell, and nothing more to make; the sequence ends at its next token.
            sequence.cancelled = True
            if isinstance(gone, asyncio.CancelledError):
                raise
        except Exception as exc:
            log.exception("%s %s failed mid-stream", request.method, request.path)
            try:
                await response.write(error_event(WorkerError(f"internal error ({type(exc).__name__}); the worker "
                                                             "logged it")) + b"data: [DONE]\n\n")
            except ConnectionResetError:
                pass
        return response

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.worker.name, "object": "model", "owned_by": "anvil",
            "max_model_len": self.worker.engine.max_seq_len}]})

    # --- the tokenizer, as vLLM exposes it -------------------------------------------------------
    async def tokenizer_info(self, request: web.Request) -> web.Response:
        return web.json_response({"eos_token": EOS, "bos_token": None, "pad_token": None,
                                  "chat_template": self.worker.template_source,
                                  "model_max_length": self.worker.engine.max_seq_len})

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's /tokenize: a ``prompt``, or chat ``messages`` rendered with the chat template first
        (how Anvil counts an Anthropic client's tokens for /v1/messages/count_tokens)."""
        body = await self._json(request)
        if body.get("messages") is not None:
            prompt = self._render(body.get("messages"))
        else:
            prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError(422, "prompt", "prompt must be a string (or send messages)")
        tokens = self.worker.tokenizer.encode(prompt).ids
        return web.json_response({"tokens": tokens, "count": len(tokens),
                                  "max_model_len": self.worker.engine.max_seq_len})

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise RequestError(422, "tokens", "tokens must be a list of integers")
        token_ids(tokens, self.worker.engine.vocab_size, "tokens")
        return web.json_response({"prompt": self.worker.tokenizer.decode(tokens)})

    # --- probes -------------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        worker = self.worker
        if worker.failure is not None:  # the scheduler thread is gone: the process is on its way out
            return web.json_response({"status": "failed", "detail": "the scheduler thread died: "
                                      f"{type(worker.failure).__name__}: {worker.failure}"}, status=503)
        if worker.ready and not worker.stopping:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "loading" if not worker.ready else "stopping"}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"content-type": CONTENT_TYPE_LATEST})


def _content(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: the text ones are kept, in order
        texts = [part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        if len(texts) != len(content):
            raise RequestError(400, f"messages[{index}].content", "only text content parts are understood")
        if not all(isinstance(text, str) for text in texts):
            raise RequestError(422, f"messages[{index}].content", "a text part's text must be a string")
        return "".join(texts)
    if content is None:
        return ""
    raise RequestError(422, f"messages[{index}].content", "content must be a string or a list of text parts")


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options") or {}
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _usage(sequences: list[Sequence]) -> dict[str, int]:
    prompt = sum(len(s.prompt) for s in sequences)
    completion = sum(len(s.output) for s in sequences)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _gone(request: web.Request) -> bool:
    """Whether the client has closed its connection (aiohttp does not cancel a handler for it)."""
    transport = request.transport
    return transport is None or transport.is_closing()
