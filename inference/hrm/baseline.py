"""The A/B baseline: a transformers causal LM (a small GPT-2 built here) behind the worker's ``Engine``.

It batches the way ``generate`` does, statically: the requests waiting when a step starts
(grouped by their sampling parameters) run to completion together, and the next ones wait for
the whole batch. That is the point of comparison for the HRM engine's continuous batching, so
it is kept plain: no cache tricks of our own, only what ``generate`` does.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import torch
from tokenizers import Tokenizer

from inference.hrm.checkpoint import EOS, CheckpointError
from inference.hrm.config import HRMConfig
from inference.hrm.engine import ContextExceeded, QueueFull, SamplingParams, Sequence, TokenScore, top_scores
from inference.hrm.sampling import SAMPLING_EPS


def _transformers():  # type: ignore[no-untyped-def]
    """transformers is an extra (`make run` does not install it): say which one when it is missing."""
    try:
        import transformers
    except ImportError as error:
        raise CheckpointError("the baseline engine needs transformers: pip install -e '.[baseline]'") from error
    return transformers


def baseline_depth(config: HRMConfig) -> int:
    """GPT-2 layers doing the HRM's work per token: the blocks its unrolled cycles apply.

    With the same width, vocabulary and per-token depth the two engines do about the same
    arithmetic per token, so tokens/s compares the engines rather than the models.
    """
    return config.h_cycles * (config.l_cycles * config.l_layers + config.h_layers)


def build_gpt2(directory: Path, tokenizer: Tokenizer, *, d_model: int, layers: int, heads: int, max_seq_len: int,
               seed: int = 0) -> None:
    """Write a freshly initialised GPT-2 (config.json, model.safetensors) and the tokenizer into ``directory``."""
    transformers = _transformers()
    GPT2Config, GPT2LMHeadModel = transformers.GPT2Config, transformers.GPT2LMHeadModel  # noqa: N806

    eos = tokenizer.token_to_id(EOS)
    config = GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=max_seq_len, n_embd=d_model,
                        n_layer=layers, n_head=heads, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save(str(directory / "tokenizer.json"))


class HFEngine:
    def __init__(self, directory: Path, *, device: str = "cpu", max_batch: int = 16, max_queue: int = 256) -> None:
        AutoModelForCausalLM = _transformers().AutoModelForCausalLM  # noqa: N806

        if not (directory / "tokenizer.json").is_file():
            raise CheckpointError(f"{directory} has no tokenizer.json")
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.eos_id = self.tokenizer.token_to_id(EOS)
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(device).eval()
        self.max_seq_len = int(getattr(self.model.config, "n_positions", None)
                               or self.model.config.max_position_embeddings)
        self.vocab_size = min(int(self.model.config.vocab_size), self.tokenizer.get_vocab_size())
        self.device, self.max_batch, self.max_queue = device, max_batch, max_queue
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # the batch a step is generating; what ``abandon`` hands back

    @property
    def idle(self) -> bool:
        return not self.waiting

    def submit(self, sequence: Sequence) -> Sequence:
        if len(self.waiting) >= self.max_queue:
            raise QueueFull(f"{len(self.waiting)} requests are already waiting (max_queue={self.max_queue})")
        if not sequence.prompt:
            raise ValueError("the prompt has no tokens")
        if len(sequence.prompt) + sequence.params.max_tokens > self.max_seq_len:
            raise ContextExceeded(f"prompt ({len(sequence.prompt)} tokens) plus max_tokens "
                                  f"({sequence.params.max_tokens}) exceeds the context of {self.max_seq_len} tokens")
        self.waiting.append(sequence)
        return sequence

    @torch.no_grad()
    def step(self) -> list[Sequence]:
        """Run the waiting requests (up to max_batch), grouped by sampling parameters, to completion."""
        batch = self.running = [self.waiting.popleft() for _ in range(min(self.max_batch, len(self.waiting)))]
        groups: dict[tuple[object, ...], list[Sequence]] = {}
        for sequence in batch:
            p = sequence.params
            groups.setdefault((p.temperature, p.top_p, p.max_tokens, p.seed, p.ignore_eos), []).append(sequence)
        for sequences in groups.values():
            self._generate(sequences, sequences[0].params)
        self.running = []
        return batch

    def abandon(self) -> list[Sequence]:
        held, self.running = self.running, []
        return held

    def _generate(self, sequences: list[Sequence], params: SamplingParams) -> None:
        width = max(len(s.prompt) for s in sequences)
        pad = self.eos_id if self.eos_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(s.prompt)) + s.prompt for s in sequences], device=self.device)
        mask = torch.tensor([[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in sequences],
                            device=self.device)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        want_logprobs = any(s.params.logprobs is not None for s in sequences)
        sample = params.temperature >= SAMPLING_EPS  # as the HRM engine: a vanishing temperature is greedy
        streamer = _Streamer(sequences, self.tokenizer, self.eos_id)  # tokens reach clients as they are made
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=params.max_tokens, do_sample=sample,
            temperature=params.temperature if sample else None, top_p=params.top_p if sample else None, top_k=None,
            pad_token_id=pad, eos_token_id=None if params.ignore_eos else self.eos_id, streamer=streamer,
            return_dict_in_generate=True, output_logits=want_logprobs)
        new = out.sequences[:, width:].tolist()
        for row, sequence in enumerate(sequences):
            if sequence.params.logprobs is not None:
                taken = len(sequence.output) + (1 if sequence.finish_reason == "stop" else 0)
                for step, token in enumerate(new[row][:taken]):
                    sequence.scores += top_scores(out.logits[step][row][None], [token], sequence.params.logprobs)
            if not sequence.finished:
                sequence.finish_reason = "length"

    @torch.no_grad()
    def score(self, tokens: list[int], top: int = 0) -> list[TokenScore]:
        tokens = tokens[-self.max_seq_len:]
        logits = self.model(torch.tensor([tokens], device=self.device)).logits
        return top_scores(logits[0, :-1], tokens[1:], top)


class _Streamer:
    """transformers' streamer protocol: ``put`` gets the prompt once, then each step's new tokens."""

    def __init__(self, sequences: list[Sequence], tokenizer: Tokenizer, eos_id: int | None) -> None:
        self.sequences, self.tokenizer, self.eos_id = sequences, tokenizer, eos_id
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for sequence, token in zip(self.sequences, value.reshape(len(self.sequences), -1)[:, -1].tolist(),
                                   strict=True):
            sequence.append(token, self.tokenizer, self.eos_id)

    def end(self) -> None:
        return None
