"""Continuous batching for the HRM: requests join and leave the running batch between decode steps.

Each ``step()`` first admits waiting requests into free rows (a prefill per request, into
that row of one shared KV cache), then runs one batched decode step for every active row,
each at its own position. A sequence that finishes (EOS, a stop string, its token limit)
leaves at once and the last active row moves into its place, so the active rows stay
contiguous and every decode step works on a view, never a copy, of the cache.

``step()`` is synchronous torch work; the worker runs it on its own thread and hands
tokens to the event loop (``on_token`` callbacks). ``Engine`` is the interface the worker
needs; ``BatchEngine`` (the HRM) and ``inference.hrm.baseline.HFEngine`` (a transformers
model, the A/B baseline) both provide it.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tokenizers import Tokenizer

from inference.hrm.model import HRM, HRMCache
from inference.hrm.sampling import cut_at_stop, next_tokens


class QueueFull(Exception):
    """More requests are waiting than the engine will hold (answered 429 by the worker)."""


class ContextExceeded(ValueError):
    """A prompt plus its max_tokens does not fit the model's context (answered 400 by the worker)."""


@dataclass
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # record each chosen token's log-probability and this many alternatives
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks), as vllm bench serve does


@dataclass(frozen=True)
class TokenScore:
    """A token's log-probability under the model, and the most likely alternatives at that position."""

    token: int
    logprob: float
    top: dict[int, float]


@dataclass
class Sequence:
    prompt: list[int]
    params: SamplingParams
    on_token: Callable[[Sequence, str], None] | None = None
    output: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    row: int = -1
    generator: torch.Generator | None = None
    scores: list[TokenScore] = field(default_factory=list)  # with params.logprobs; an EOS that ended it included
    on_done: Callable[[Sequence], None] | None = None  # called by the scheduler once it finished or failed
    error: str | None = None  # why the engine failed it (the worker answers 500); None when it ran
    # Set from the event loop when the client has gone: the next token ends the sequence ("abort"),
    # freeing its batch row instead of decoding to max_tokens for nobody. A bool write is atomic.
    cancelled: bool = False
    _emitted: int = 0  # characters of ``text`` already handed to on_token
    # Incremental detokenization (as vLLM does): only the tokens since ``_prefix`` are decoded per
    # step, so a long answer costs linear, not quadratic, time on the thread that owns the batch.
    _prefix: int = 0  # output[_prefix:_read] decodes to text already in ``text``
    _read: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def append(self, token: int, tokenizer: Tokenizer, eos_id: int | None) -> None:
        """Take one generated token: EOS, a stop string or the token limit may finish the sequence."""
        if self.finished:
            return
        if self.cancelled:
            self.finish_reason = "abort"
            return
        if eos_id is not None and token == eos_id and not self.params.ignore_eos:
            self.finish_reason = "stop"
            self._emit(final=True)
            return
        self.output.append(token)
        delta = self._decode_new(tokenizer)
        if delta:
            stops = self.params.stop
            # Only a stop string that ends in the new text can be new: search the tail that could hold one.
            start = max(0, len(self.text) - max((len(stop) for stop in stops), default=1) + 1)
            self.text += delta
            cut, stopped = cut_at_stop(self.text[start:], list(stops))
            if stopped:
                self.text = self.text[:start] + cut
                self.finish_reason = "stop"
        if self.finish_reason is None and len(self.output) >= self.params.max_tokens:
            self.finish_reason = "length"
        self._emit(final=self.finished)

    def _decode_new(self, tokenizer: Tokenizer) -> str:
        """The text the newest tokens add, once it is whole (a byte-level token may end mid-character)."""
        before = tokenizer.decode(self.output[self._prefix:self._read]) if self._read > self._prefix else ""
        after = tokenizer.decode(self.output[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.output)
            return after[len(before):]
        if len(self.output) >= self.params.max_tokens:  # the last token: what there is, replacement and all
            self._prefix, self._read = self._read, len(self.output)
            return after[len(before):]
        return ""

    def _emit(self, final: bool) -> None:
        # Hold back a tail that could still become a stop string or an unfinished UTF-8 character.
        hold = 0 if final else max((len(stop) - 1 for stop in self.params.stop), default=0)
        text = self.text
        if not final and text.endswith("\ufffd"):
            hold = max(hold, 1)
        ready = len(text) - hold
        if ready > self._emitted and self.on_token is not None:
            self.on_token(self, text[self._emitted:ready])
        self._emitted = max(self._emitted, ready)


def top_scores(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenScore]:
    """logits (T, V) at the positions that chose ``tokens`` (T) -> each token's score and ``top`` alternatives."""
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    # dtype given: an empty list (a one-token text scored teacher-forced) would otherwise make a float index.
    index = torch.tensor(tokens, dtype=torch.long, device=logits.device)
    chosen = logprobs.gather(1, index[:, None])[:, 0].tolist()
    best = logprobs.topk(top, dim=-1) if top else None
    out = []
    for row, (token, value) in enumerate(zip(tokens, chosen, strict=True)):
        alternatives = ({int(i): float(v) for i, v in zip(best.indices[row].tolist(), best.values[row].tolist(),
                                                          strict=True)} if best is not None else {})
        out.append(TokenScore(token, float(value), alternatives))
    return out


class Engine(Protocol):
    """What the worker needs of an engine. Every method runs on the worker's scheduler thread."""

    tokenizer: Tokenizer
    eos_id: int | None
    max_seq_len: int
    vocab_size: int  # token ids the model embeds and the tokenizer decodes: 0 .. vocab_size - 1

    @property
    def idle(self) -> bool: ...

    def submit(self, sequence: Sequence) -> Sequence: ...

    def step(self) -> list[Sequence]: ...

    def abandon(self) -> list[Sequence]:
        """After ``step`` raised: take every sequence that step held out of the engine (batch, cache
        rows) and return them, so the next step starts clean. Ones that had finished are returned too."""
        ...

    def score(self, tokens: list[int], top: int = 0) -> list[TokenScore]:
        """Teacher-forced: the score of tokens[1:], each given the tokens before it."""
        ...


class BatchEngine:
    def __init__(self, model: HRM, tokenizer: Tokenizer, *, eos_id: int | None, max_batch: int = 16,
                 max_queue: int = 256, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 autocast: torch.dtype | None = None) -> None:
        self.model, self.tokenizer, self.eos_id = model, tokenizer, eos_id
        # Optional mixed precision on CUDA: matmuls in bf16/fp16, the cache and sampling in ``dtype``.
        self.autocast = autocast if autocast is not None and str(device).startswith("cuda") else None
        self.max_batch, self.max_queue = max_batch, max_queue
        self.device, self.dtype = device, dtype
        self.max_seq_len = model.config.max_seq_len
        self.vocab_size = min(model.config.vocab_size, tokenizer.get_vocab_size())
        self.cache = HRMCache.empty(model.config, max_batch, device, dtype)
        self.waiting: deque[Sequence] = deque()
        self.active: list[Sequence] = []
        self.next_token = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.step_finished: list[Sequence] = []  # finished in the step under way, handed back when it returns

    def submit(self, sequence: Sequence) -> Sequence:
        if len(self.waiting) >= self.max_queue:
            raise QueueFull(f"{len(self.waiting)} requests are already waiting (max_queue={self.max_queue})")
        limit = self.max_seq_len
        if not sequence.prompt:
            raise ValueError("the prompt has no tokens")
        if len(sequence.prompt) + sequence.params.max_tokens > limit:
            raise ContextExceeded(f"prompt ({len(sequence.prompt)} tokens) plus max_tokens "
                                  f"({sequence.params.max_tokens}) exceeds the context of {limit} tokens")
        if sequence.params.seed is not None:
            sequence.generator = torch.Generator(device=self.device).manual_seed(sequence.params.seed)
        self.waiting.append(sequence)
        return sequence

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.active

    def _precision(self) -> Any:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.autocast)

    @torch.no_grad()
    def step(self) -> list[Sequence]:
        """Admit, then decode one token for every active sequence; returns the ones that finished."""
        with self._precision():
            return self._step()

    def _step(self) -> list[Sequence]:
        finished = self.step_finished
        while self.waiting and len(self.active) < self.max_batch:
            sequence = self.waiting.popleft()
            sequence.row = len(self.active)
            self.active.append(sequence)
            self._prefill(sequence)
            if sequence.finished:  # its first token ended it (EOS, a stop, max_tokens=1): no decode step
                finished.append(sequence)
                self._leave(sequence)
        if not self.active:
            return self._hand_back()
        batch = len(self.active)
        positions = torch.tensor([len(s.prompt) + len(s.output) - 1 for s in self.active], device=self.device)
        logits = self.model.decode(self.next_token[:batch], self.cache, positions)
        self._choose(logits)
        done = [sequence for sequence in self.active if sequence.finished]
        for sequence in done:
            self._leave(sequence)
        finished += done
        return self._hand_back()

    def _hand_back(self) -> list[Sequence]:
        finished, self.step_finished = self.step_finished, []
        return finished

    def abandon(self) -> list[Sequence]:
        # Rows are only ever read up to each active sequence's own position and a new one's prefill
        # overwrites its row from position 0, so emptying the batch is all the cache needs.
        held = [*self.step_finished, *self.active]
        self.step_finished, self.active = [], []
        return held

    def _prefill(self, sequence: Sequence) -> None:
        row = sequence.row
        view = HRMCache(self.cache.keys[:, row:row + 1], self.cache.values[:, row:row + 1])
        prompt = torch.tensor([sequence.prompt], device=self.device)
        logits, _ = self.model(prompt, view, 0)
        self._accept(sequence, logits[0, -1])

    def _choose(self, logits: torch.Tensor) -> None:
        temperature = torch.tensor([s.params.temperature for s in self.active])
        top_p = torch.tensor([s.params.top_p for s in self.active])
        chosen = next_tokens(logits, temperature, top_p, [s.generator for s in self.active]).tolist()
        for row, (sequence, token) in enumerate(zip(self.active, chosen, strict=True)):
            self._take(sequence, token, logits[row])

    def _accept(self, sequence: Sequence, logits: torch.Tensor) -> None:
        params = sequence.params
        token = next_tokens(logits[None], torch.tensor([params.temperature]), torch.tensor([params.top_p]),
                            [sequence.generator])[0]
        self._take(sequence, int(token), logits)

    def _take(self, sequence: Sequence, token: int, logits: torch.Tensor) -> None:
        if sequence.params.logprobs is not None:
            sequence.scores += top_scores(logits[None], [token], sequence.params.logprobs)
        sequence.append(token, self.tokenizer, self.eos_id)
        if not sequence.finished:
            self.next_token[sequence.row] = token

    @torch.no_grad()
    def score(self, tokens: list[int], top: int = 0) -> list[TokenScore]:
        tokens = tokens[-self.max_seq_len:]
        with self._precision():
            logits, _ = self.model(torch.tensor([tokens], device=self.device))
        return top_scores(logits[0, :-1], tokens[1:], top)

    def _leave(self, sequence: Sequence) -> None:
        last = self.active[-1]
        if last is not sequence:
            # Keep active rows contiguous: the last row moves into the freed one.
            self.cache.keys[:, sequence.row] = self.cache.keys[:, last.row]
            self.cache.values[:, sequence.row] = self.cache.values[:, last.row]
            self.next_token[sequence.row] = self.next_token[last.row]
            self.active[sequence.row] = last
            last.row = sequence.row
        self.active.pop()

    def run_until_idle(self) -> None:
        while not self.idle:
            self.step()
