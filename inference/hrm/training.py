"""Training the demo HRM on a corpus every Python has: the language reference in ``pydoc_data.topics``.

Next-token cross-entropy over random windows of the tokenized corpus, AdamW with a cosine
schedule. The last 5% of the corpus is held out; the report compares the held-out loss with a
unigram model fitted on the training part (the loss of always predicting token frequencies),
which a language model must clearly beat.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from inference.hrm.checkpoint import EOS, save_checkpoint, train_tokenizer
from inference.hrm.config import HRMConfig
from inference.hrm.model import HRM

HELD_OUT = 0.05


@dataclass
class TrainingReport:
    steps: int
    seconds: float
    held_out_loss: float
    unigram_loss: float
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    samples: list[str] = field(default_factory=list)


def corpus_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def unigram_loss(train: torch.Tensor, held_out: torch.Tensor, vocab: int) -> float:
    counts = torch.bincount(train, minlength=vocab).double() + 1.0  # add-one smoothing
    logprobs = torch.log(counts / counts.sum())
    return float(-logprobs[held_out].mean())


@torch.no_grad()
def evaluate(model: HRM, data: torch.Tensor, window: int, batches: int = 8) -> float:
    model.eval()
    losses = []
    for start in range(0, min(len(data) - window - 1, batches * window * 4), window * 4 or 1):
        chunk = data[start:start + window + 1][None]
        logits, _ = model(chunk[:, :-1])
        losses.append(float(F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())))
    model.train()
    return sum(losses) / max(1, len(losses))


def train(out: Path, config: HRMConfig, steps: int, batch: int, window: int, lr: float, seed: int,
          texts: list[str] | None = None, progress: Callable[[int, float], None] | None = None) -> TrainingReport:
    torch.manual_seed(seed)
    texts = texts if texts is not None else corpus_texts()
    tokenizer = train_tokenizer(texts, config.vocab_size)
    eos = tokenizer.token_to_id(EOS)
    ids: list[int] = []
    for text in texts:
        ids += tokenizer.encode(text).ids + [eos]
    data = torch.tensor(ids)
    split = int(len(data) * (1 - HELD_OUT))
    train_data, held_out = data[:split], data[split:]
    model = HRM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps)))
    report = TrainingReport(steps, 0.0, 0.0, unigram_loss(train_data, held_out, config.vocab_size))
    started = time.monotonic()
    for step in range(steps):
        starts = torch.randint(0, len(train_data) - window - 1, (batch,))
        chunk = torch.stack([train_data[s:s + window + 1] for s in starts.tolist()])
        logits, _ = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        value = loss.item()
        report.losses.append((step, value))
        if progress is not None:
            progress(step + 1, value)
    report.seconds = time.monotonic() - started
    report.held_out_loss = evaluate(model, held_out, window)
    save_checkpoint(out, model.eval(), tokenizer)
    report.samples = [_sample(model, tokenizer, prompt) for prompt in ("The ", "A class ")]
    return report


@torch.no_grad()
def _sample(model: HRM, tokenizer, prompt: str, tokens: int = 40) -> str:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode(prompt).ids
    for _ in range(tokens):
        logits, _ = model(torch.tensor([ids[-model.config.max_seq_len:]]))
        ids.append(int(logits[0, -1].argmax()))
    return tokenizer.decode(ids)


def plot_losses(report: TrainingReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file
    import matplotlib.pyplot as plt

    steps = [s for s, _ in report.losses]
    losses = [loss for _, loss in report.losses]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, losses, linewidth=1, label="training loss")
    axis.axhline(report.held_out_loss, color="tab:green", linestyle="--",
                 label=f"held-out loss {report.held_out_loss:.2f}")
    axis.axhline(report.unigram_loss, color="tab:red", linestyle=":",
                 label=f"unigram baseline {report.unigram_loss:.2f}")
    axis.set_xlabel("step")
    axis.set_ylabel("cross-entropy (nats/token)")
    axis.set_title("HRM demo model on pydoc_data.topics")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
