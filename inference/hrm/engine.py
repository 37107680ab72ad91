"""Continuous batching for the HRM: requests join and leave the running batch between decode steps.

Each ``step()`` first admits waiting requests into free rows (a prefill per request, into
that row of one shared KV cache), then runs one batched decode step for every active row,
each at its own position. A sequence that finishes (EOS, a stop string, its token limit)
leaves at once and the last active row moves into its place, so the active rows stay
contiguous and every decode step works on a view, never a copy, of the cache.

``step()`` is synchronous torch work; the worker runs it on its own thread and hands
tokens to the event loop (``on_token`` callbacks).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from inference.hrm.model import HRM, HRMCache
from inference.hrm.sampling import cut_at_stop, next_tokens


class QueueFull(Exception):
    """More requests are waiting than the engine will hold (answered 429 by the worker)."""


@dataclass
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


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
    _emitted: int = 0  # characters of ``text`` already handed to on_token

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class BatchEngine:
    def __init__(self, model: HRM, tokenizer: Tokenizer, *, eos_id: int | None, max_batch: int = 16,
                 max_queue: int = 256, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.model, self.tokenizer, self.eos_id = model, tokenizer, eos_id
        self.max_batch, self.max_queue = max_batch, max_queue
        self.device, self.dtype = device, dtype
        self.cache = HRMCache.empty(model.config, max_batch, device, dtype)
        self.waiting: deque[Sequence] = deque()
        self.active: list[Sequence] = []
        self.next_token = torch.zeros(max_batch, dtype=torch.long, device=device)

    def submit(self, sequence: Sequence) -> Sequence:
        if len(self.waiting) >= self.max_queue:
            raise QueueFull(f"{len(self.waiting)} requests are already waiting (max_queue={self.max_queue})")
        limit = self.model.config.max_seq_len
        if len(sequence.prompt) + sequence.params.max_tokens > limit:
            raise ValueError(f"prompt ({len(sequence.prompt)} tokens) plus max_tokens "
                             f"({sequence.params.max_tokens}) exceeds the context of {limit} tokens")
        if sequence.params.seed is not None:
            sequence.generator = torch.Generator(device=self.device).manual_seed(sequence.params.seed)
        self.waiting.append(sequence)
        return sequence

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.active

    @torch.no_grad()
    def step(self) -> list[Sequence]:
        """Admit, then decode one token for every active sequence; returns the ones that finished."""
        finished: list[Sequence] = []
        while self.waiting and len(self.active) < self.max_batch:
            sequence = self.waiting.popleft()
            sequence.row = len(self.active)
            self.active.append(sequence)
            self._prefill(sequence)
        if not self.active:
            return finished
        batch = len(self.active)
        positions = torch.tensor([len(s.prompt) + len(s.output) - 1 for s in self.active], device=self.device)
        logits = self.model.decode(self.next_token[:batch], self.cache, positions)
        self._choose(logits)
        for sequence in list(self.active):
            if sequence.finished:
                finished.append(sequence)
        for sequence in finished:
            self._leave(sequence)
        return finished

    def _prefill(self, sequence: Sequence) -> None:
        row = sequence.row
        view = HRMCache(self.cache.keys[:, row:row + 1], self.cache.values[:, row:row + 1])
        prompt = torch.tensor([sequence.prompt], device=self.device)
        logits, _ = self.model(prompt, view, 0)
        self._accept(sequence, logits[0, -1])

    def _choose(self, logits: torch.Tensor) -> None:
        temperature = torch.tensor([s.params.temperature for s in self.active])
        top_p = torch.tensor([s.params.top_p for s in self.active])
        chosen = next_tokens(logits, temperature, top_p, [s.generator for s in self.active])
        for sequence, token in zip(self.active, chosen.tolist(), strict=True):
            self._append(sequence, token)

    def _accept(self, sequence: Sequence, logits: torch.Tensor) -> None:
        params = sequence.params
        token = next_tokens(logits[None], torch.tensor([params.temperature]), torch.tensor([params.top_p]),
                            [sequence.generator])[0]
        self._append(sequence, int(token))

    def _append(self, sequence: Sequence, token: int) -> None:
        if sequence.finished:
            return
        if self.eos_id is not None and token == self.eos_id:
            sequence.finish_reason = "stop"
            self._emit(sequence, final=True)
            return
        sequence.output.append(token)
        self.next_token[sequence.row] = token
        text = self.tokenizer.decode(sequence.output)
        cut, stopped = cut_at_stop(text, list(sequence.params.stop))
        sequence.text = cut
        if stopped:
            sequence.finish_reason = "stop"
        elif len(sequence.output) >= sequence.params.max_tokens:
            sequence.finish_reason = "length"
        self._emit(sequence, final=sequence.finished)

    def _emit(self, sequence: Sequence, final: bool) -> None:
        # Hold back a tail that could still become a stop string or an unfinished UTF-8 character.
        hold = 0 if final else max((len(stop) - 1 for stop in sequence.params.stop), default=0)
        text = sequence.text
        if not final and text.endswith("\ufffd"):
            hold = max(hold, 1)
        ready = len(text) - hold
        if ready > sequence._emitted and sequence.on_token is not None:
            sequence.on_token(sequence, text[sequence._emitted:ready])
        sequence._emitted = max(sequence._emitted, ready)

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
