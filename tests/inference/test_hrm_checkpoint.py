"""HRM checkpoints (config, safetensors, byte-level tokenizer) and sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.hrm.checkpoint import CheckpointError, eos_id, load_checkpoint, save_checkpoint, train_tokenizer
from inference.hrm.config import HRMConfig
from inference.hrm.model import HRM
from inference.hrm.sampling import cut_at_stop, next_tokens

CORPUS = ["The quick brown fox jumps over the lazy dog. " * 20, "def f(x):\n    return x * 2\n" * 20]


def test_a_checkpoint_round_trips_and_the_tokenizer_covers_every_byte(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    torch.manual_seed(0)
    model = HRM(HRMConfig(vocab_size=300, d_model=32, n_heads=2, h_layers=1, l_layers=1, max_seq_len=64))
    save_checkpoint(tmp_path, model, tokenizer)
    loaded, loaded_tokenizer = load_checkpoint(tmp_path)
    tokens = torch.tensor([loaded_tokenizer.encode("the lazy fox").ids])
    torch.testing.assert_close(loaded(tokens)[0], model.eval()(tokens)[0])
    text = "Ünïcödé ✓ never seen 🙂"
    assert loaded_tokenizer.decode(loaded_tokenizer.encode(text).ids) == text  # byte-level: nothing is unknown
    assert eos_id(loaded_tokenizer) == 0


def test_a_directory_missing_a_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    HRMConfig().save(tmp_path)
    with pytest.raises(CheckpointError, match="model.safetensors, tokenizer.json"):
        load_checkpoint(tmp_path)


def test_sampling_is_greedy_at_zero_and_reproducible_with_a_seed() -> None:
    logits = torch.randn(2, 50)
    zero = next_tokens(logits, torch.zeros(2), torch.ones(2), [None, None])
    assert zero.tolist() == logits.argmax(-1).tolist()

    def draw(seed: int) -> list[int]:
        generators = [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)]
        return [next_tokens(logits, torch.full((2,), 1.0), torch.full((2,), 0.9), generators).tolist()
                for _ in range(20)]

    assert draw(7) == draw(7) and draw(7) != draw(8)


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    seen = {int(next_tokens(logits, torch.ones(1), torch.tensor([0.8]), [torch.Generator().manual_seed(s)])[0])
            for s in range(200)}
    assert seen == {0, 1}


def test_stop_strings_cut_exactly() -> None:
    assert cut_at_stop("answer: 42\nQ: next", ["\nQ:", "###"]) == ("answer: 42", True)
    assert cut_at_stop("no stop here", ["###"]) == ("no stop here", False)
    assert cut_at_stop("a###b\nQ:", ["\nQ:", "###"]) == ("a", True)  # the earliest wins
