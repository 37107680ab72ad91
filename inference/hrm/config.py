"""The HRM configuration: a dataclass, stored as config.json in a checkpoint directory."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class HRMConfig:
    vocab_size: int = 512
    d_model: int = 128
    n_heads: int = 4
    h_layers: int = 2  # transformer blocks in the slow, high-level module
    l_layers: int = 2  # transformer blocks in the fast, low-level module
    h_cycles: int = 2  # high-level steps per token
    l_cycles: int = 2  # low-level steps per high-level step
    expansion: float = 8 / 3  # SwiGLU hidden size over d_model
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("the head size must be even (RoPE rotates pairs)")
        for name in ("vocab_size", "h_layers", "l_layers", "h_cycles", "l_cycles", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden(self) -> int:
        # SwiGLU hidden width, rounded up to a multiple of 64 for friendly matmuls.
        return -(-int(self.d_model * self.expansion) // 64) * 64

    def save(self, directory: Path) -> None:
        (directory / "config.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> HRMConfig:
        data = json.loads((directory / "config.json").read_text())
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{directory}/config.json has unknown fields: {sorted(unknown)}")
        return cls(**data)
