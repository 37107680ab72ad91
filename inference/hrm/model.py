"""HRM in torch, causal, for language modelling, with a KV cache for decoding.

Two recurrent modules of transformer blocks: a slow high-level module H and a fast
low-level module L. For every token, ``h_cycles`` high-level steps each run ``l_cycles``
low-level steps:

    z_L <- L(z_L + z_H + x)      (input injection: the token embedding and the plan)
    z_H <- H(z_H + z_L)

and the logits come from z_H. Blocks are post-norm (RMSNorm after each residual), with
RoPE attention and SwiGLU; the token embedding is scaled by sqrt(d); a q-head reads z_H
for ACT halting (halt / continue).

Why a KV cache is valid: attention is causal at every unrolled step, so the keys and values
that position t produces at step s depend only on positions <= t. Unrolled, the model is a
fixed stack of ``h_cycles * (l_cycles * l_layers + h_layers)`` attention layers, and each
keeps its own cache. Decoding a token then costs one pass of that stack over one position,
where the reference implementation re-ran the whole context for every token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from inference.hrm.config import HRMConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One fused op (decoding is bound by the number of ops per token, not by arithmetic), in fp32.
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


def rope_tables(config: HRMConfig, device: torch.device | str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    half = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, half, device=device, dtype=torch.float64) / half))
    angles = torch.outer(torch.arange(config.max_seq_len, device=device, dtype=torch.float64), inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)  # (T_max, D/2) each


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); cos/sin: (T, D/2) for the positions of x
    first, second = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((first * cos - second * sin, first * sin + second * cos), dim=-1)
    return rotated.flatten(-2)


@dataclass
class HRMCache:
    """Keys and values of every unrolled attention layer: (slots, B, H, T_max, D) each."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, config: HRMConfig, batch: int, device: torch.device | str, dtype: torch.dtype,
              max_len: int | None = None) -> HRMCache:
        slots = config.h_cycles * (config.l_cycles * config.l_layers + config.h_layers)
        shape = (slots, batch, config.n_heads, max_len or config.max_seq_len, config.head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))


@dataclass(frozen=True)
class DecodeStep:
    """One batched decode step, worked out once and shared by every unrolled attention layer."""

    positions: torch.Tensor  # (B,) each row's position
    rows: torch.Tensor  # (B,) 0..B-1
    span: int  # cache positions any row can see
    visible: torch.Tensor  # (B, 1, 1, span) what each row may attend to

    @classmethod
    def of(cls, positions: torch.Tensor) -> DecodeStep:
        span = int(positions.max()) + 1
        visible = torch.arange(span, device=positions.device)[None, :] <= positions[:, None]
        return cls(positions, torch.arange(positions.shape[0], device=positions.device), span,
                   visible[:, None, None, :])


class Attention(nn.Module):
    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: HRMCache | None,
                slot: int, start: int, step: DecodeStep | None = None) -> torch.Tensor:
        batch, steps, width = x.shape  # (B, T, C)
        qkv = self.qkv(x).view(batch, steps, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(qkv[:2], cos, sin)  # queries and keys rotated together: (B, H, T, D) each
        v = qkv[2]
        if step is not None:
            # Batched decode: one new token per row, each row at its own position.
            assert cache is not None and steps == 1
            cache.keys[slot, step.rows, :, step.positions] = k[:, :, 0]
            cache.values[slot, step.rows, :, step.positions] = v[:, :, 0]
            keys, values = cache.keys[slot, :batch, :, :step.span], cache.values[slot, :batch, :, :step.span]
            attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=step.visible)
            return self.out(attended.transpose(1, 2).reshape(batch, steps, width))
        if cache is not None:
            cache.keys[slot, :, :, start:start + steps] = k
            cache.values[slot, :, :, start:start + steps] = v
            k = cache.keys[slot, :, :, :start + steps]
            v = cache.values[slot, :, :, :start + steps]
        if steps == 1:
            attended = F.scaled_dot_product_attention(q, k, v)  # one new position sees everything before it
        elif start == 0:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            total = start + steps
            mask = torch.ones(steps, total, dtype=torch.bool, device=x.device).tril(diagonal=start)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(attended.transpose(1, 2).reshape(batch, steps, width))


class SwiGLU(nn.Module):
    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.hidden, bias=False)
        self.down = nn.Linear(config.hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Post-norm: normalise after each residual, as HRM does."""

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.attention, self.mlp = Attention(config), SwiGLU(config)
        self.norm1, self.norm2 = RMSNorm(config.d_model, config.norm_eps), RMSNorm(config.d_model, config.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: HRMCache | None, slot: int,
                start: int, step: DecodeStep | None = None) -> torch.Tensor:
        x = self.norm1(x + self.attention(x, cos, sin, cache, slot, start, step))
        return self.norm2(x + self.mlp(x))


class ReasoningModule(nn.Module):
    def __init__(self, config: HRMConfig, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(config) for _ in range(layers))

    def forward(self, state: torch.Tensor, injection: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: HRMCache | None, first_slot: int, start: int,
                step: DecodeStep | None = None) -> torch.Tensor:
        hidden = state + injection
        for offset, block in enumerate(self.blocks):
            hidden = block(hidden, cos, sin, cache, first_slot + offset, start, step)
        return hidden


class HRM(nn.Module):
    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_scale = math.sqrt(config.d_model)
        self.h_init = nn.Parameter(torch.randn(config.d_model) * 0.02)
        self.l_init = nn.Parameter(torch.randn(config.d_model) * 0.02)
        self.high = ReasoningModule(config, config.h_layers)
        self.low = ReasoningModule(config, config.l_layers)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.q_head = nn.Linear(config.d_model, 2)  # ACT: (halt, continue) logits
        self.apply(self._init)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0 / math.sqrt(module.embedding_dim))

    def rope(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rope is None or self._rope[0].device != device or self._rope[0].dtype != dtype:
            self._rope = rope_tables(self.config, device, dtype)
        return self._rope

    def forward(self, tokens: torch.Tensor, cache: HRMCache | None = None,
                start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T) at positions start..start+T-1 -> (logits (B, T, V), halt logits (B, T, 2))."""
        config = self.config
        batch, steps = tokens.shape
        if start + steps > config.max_seq_len:
            raise ValueError(f"positions up to {start + steps} exceed max_seq_len {config.max_seq_len}")
        x = self.embed(tokens) * self.embed_scale  # (B, T, C)
        cos, sin = self.rope(x.device, x.dtype)
        cos, sin = cos[start:start + steps], sin[start:start + steps]
        z_high = self.h_init.to(x.dtype).expand(batch, steps, -1)
        z_low = self.l_init.to(x.dtype).expand(batch, steps, -1)
        slot = 0
        for _ in range(config.h_cycles):
            for _ in range(config.l_cycles):
                z_low = self.low(z_low, z_high + x, cos, sin, cache, slot, start)
                slot += config.l_layers
            z_high = self.high(z_high, z_low, cos, sin, cache, slot, start)
            slot += config.h_layers
        if cache is not None:
            cache.length = start + steps
        return self.lm_head(z_high), self.q_head(z_high)

    def decode(self, tokens: torch.Tensor, cache: HRMCache, positions: torch.Tensor) -> torch.Tensor:
        """One new token per row, rows at different positions: tokens (B,), positions (B,) -> logits (B, V).

        Rows 0..B-1 of the cache are the batch; each row's earlier positions must be in its cache.
        """
        config = self.config
        step = DecodeStep.of(positions)
        if step.span > config.max_seq_len:
            raise ValueError(f"a position reaches max_seq_len {config.max_seq_len}")
        x = self.embed(tokens[:, None]) * self.embed_scale  # (B, 1, C)
        cos, sin = self.rope(x.device, x.dtype)
        cos, sin = cos[positions][:, None, None, :], sin[positions][:, None, None, :]  # (B, 1, 1, D/2)
        batch = tokens.shape[0]
        z_high = self.h_init.to(x.dtype).expand(batch, 1, -1)
        z_low = self.l_init.to(x.dtype).expand(batch, 1, -1)
        slot = 0
        for _ in range(config.h_cycles):
            for _ in range(config.l_cycles):
                z_low = self.low(z_low, z_high + x, cos, sin, cache, slot, 0, step)
                slot += config.l_layers
            z_high = self.high(z_high, z_low, cos, sin, cache, slot, 0, step)
            slot += config.h_layers
        return self.lm_head(z_high[:, 0])
