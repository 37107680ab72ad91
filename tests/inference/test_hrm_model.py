"""The HRM model: causal, and its KV-cached decoding equal to full recompute."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.hrm.config import HRMConfig
from inference.hrm.model import HRM, HRMCache
from tests.support.hrm import greedy_cached, greedy_full_recompute

CONFIG = HRMConfig(vocab_size=97, d_model=64, n_heads=4, h_layers=2, l_layers=1, h_cycles=2, l_cycles=3,
                   max_seq_len=96)


@pytest.fixture
def model() -> HRM:
    torch.manual_seed(1234)
    return HRM(CONFIG).double().eval()  # float64: equal-by-construction paths compare exactly enough


@torch.no_grad()
def test_kv_cached_greedy_decoding_equals_full_recompute(model: HRM) -> None:
    prompt = torch.randint(0, CONFIG.vocab_size, (1, 11))
    assert greedy_cached(model, prompt, 40) == greedy_full_recompute(model, prompt, 40)


@torch.no_grad()
def test_cached_logits_match_full_logits_position_by_position(model: HRM) -> None:
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 30))
    full, full_q = model(tokens)
    cache = HRMCache.empty(CONFIG, 2, "cpu", torch.float64)
    head, _ = model(tokens[:, :12], cache, 0)
    middle, _ = model(tokens[:, 12:20], cache, 12)  # a chunk after a prefix: the offset causal mask
    steps = [model(tokens[:, t:t + 1], cache, t)[0] for t in range(20, 30)]
    stitched = torch.cat([head, middle, *steps], dim=1)
    torch.testing.assert_close(stitched, full, rtol=1e-9, atol=1e-9)
    assert full_q.shape == (2, 30, 2)


@torch.no_grad()
def test_the_model_is_causal(model: HRM) -> None:
    tokens = torch.randint(0, CONFIG.vocab_size, (1, 20))
    changed = tokens.clone()
    changed[0, 15:] = (changed[0, 15:] + 1) % CONFIG.vocab_size
    before, _ = model(tokens)
    after, _ = model(changed)
    torch.testing.assert_close(before[:, :15], after[:, :15])
    assert not torch.allclose(before[:, 15:], after[:, 15:])


@torch.no_grad()
def test_a_batch_equals_its_rows_one_at_a_time(model: HRM) -> None:
    tokens = torch.randint(0, CONFIG.vocab_size, (3, 16))
    batched, _ = model(tokens)
    for row in range(3):
        alone, _ = model(tokens[row:row + 1])
        torch.testing.assert_close(batched[row:row + 1], alone, rtol=1e-9, atol=1e-9)


def test_config_is_validated_and_round_trips(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of n_heads"):
        HRMConfig(d_model=30, n_heads=4)
    CONFIG.save(tmp_path)
    assert HRMConfig.load(tmp_path) == CONFIG
    with pytest.raises(ValueError, match="max_seq_len"):
        HRM(CONFIG)(torch.zeros(1, CONFIG.max_seq_len + 1, dtype=torch.long))


def test_the_web_process_never_imports_torch() -> None:
    import subprocess
    import sys

    code = ("import os, sys; os.environ['DJANGO_SETTINGS_MODULE']='anvil_site.settings'; "
            "import anvil_site.asgi; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("False")
