"""A checkpoint is a directory: config.json, model.safetensors, tokenizer.json.

The tokenizer is byte-level BPE trained here (``tokenizers``), so no text is out of
vocabulary. Weights load once, memory-mapped, as plain tensors (safetensors holds no
pickled code), onto ANVIL_DEVICE.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from inference.hrm.config import HRMConfig
from inference.hrm.model import HRM

EOS = "<|endoftext|>"
FILES = ("config.json", "model.safetensors", "tokenizer.json")


class CheckpointError(Exception):
    pass


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def save_checkpoint(directory: Path, model: HRM, tokenizer: Tokenizer) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    tokenizer.save(str(directory / "tokenizer.json"))


def load_checkpoint(directory: Path, device: str = "cpu") -> tuple[HRM, Tokenizer]:
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{directory} is not an HRM checkpoint: missing {', '.join(missing)}")
    config = HRMConfig.load(directory)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens, the model {config.vocab_size}")
    with torch.device("meta"):
        model = HRM(config)  # no memory for weights that are about to be replaced
    state = load_file(str(directory / "model.safetensors"), device=device)
    model.load_state_dict(state, assign=True)
    model._rope = None
    return model.eval(), tokenizer


def eos_id(tokenizer: Tokenizer) -> int:
    token = tokenizer.token_to_id(EOS)
    if token is None:
        raise CheckpointError(f"the tokenizer has no {EOS} token")
    return token
