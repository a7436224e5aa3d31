"""GPT-style decoder prefill: causal self-attention, MLP, LayerNorm, residuals.

The paper's GPT setting is n_embd 768, 12 heads, 2 layers, sequence 1024-8192; ``paper``
below is that model at sequence 1024 (override ``seq_len`` for the longer ones).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ._common import finalize, init_weights_, resolve_config, seeded_generator


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Size of a GPT prefill model.

    Attributes
    ----------
    n_embd, n_head, n_layer
        Width, attention heads and number of decoder blocks.
    seq_len, batch
        Shape of the token batch fed to the model.
    vocab_size
        Embedding rows and logits width.
    mlp_ratio
        MLP hidden width as a multiple of ``n_embd``.
    fused_attention
        Use ``F.scaled_dot_product_attention`` (exports as one attention op when the program is
        exported without decomposition) instead of the explicit softmax(QK^T)V.
    mask_from_positions
        Build each block's causal mask from the token positions, before the attention
        scores, instead of slicing a ``seq_len x seq_len`` buffer after them: what an export
        with a dynamic sequence length needs. torch.export refuses a slice of the buffer at a
        length bounded by its size (it guards ``t != seq_len``), and a mask sliced inside the
        attention stops its chunk flow (the slice is along the chunked axis), where a mask
        made before it is an input the chunks read. ``seq_len`` is then the longest length.
    """

    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 2
    seq_len: int = 1024
    batch: int = 1
    vocab_size: int = 50257
    mlp_ratio: int = 4
    fused_attention: bool = False
    mask_from_positions: bool = False

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


PRESETS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(n_embd=32, n_head=4, n_layer=2, seq_len=16, vocab_size=64),
    "small": GPTConfig(n_embd=128, n_head=4, n_layer=2, seq_len=256, vocab_size=512),
    "paper": GPTConfig(),
}


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.fused = cfg.fused_attention
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.mask_from_positions = cfg.mask_from_positions
        if not self.mask_from_positions:
            mask = torch.tril(torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.bool))
            self.register_buffer(
                "causal_mask", mask.view(1, 1, cfg.seq_len, cfg.seq_len), persistent=False
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        if self.mask_from_positions and not self.fused:
            pos = torch.arange(t, device=x.device)
            hidden = (pos[None, :] > pos[:, None]).view(1, 1, t, t)  # future positions
        q, k, v = self.qkv(x).split(c, dim=2)
        q = q.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        k = k.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        v = v.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        if self.fused:
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            if not self.mask_from_positions:
                hidden = ~self.causal_mask[:, :, :t, :t]
            att = att.masked_fill(hidden, float("-inf"))
            y = att.softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Prefill forward pass: token ids ``(batch, seq)`` to logits ``(batch, seq, vocab)``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def gpt(
    preset: str = "tiny", *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build a GPT prefill model and a token batch for it.

    Parameters
    ----------
    preset
        ``"tiny"`` (tests), ``"small"`` or ``"paper"`` (n_embd 768, 12 heads, 2 layers, seq 1024).
    seed
        Seeds weights and inputs; the same seed gives the same model and tokens.
    dtype
        Floating dtype of weights and activations.
    **overrides
        Fields of :class:`GPTConfig` replacing the preset's, e.g. ``seq_len=4096``.

    Returns
    -------
    (module, args)
        The model in eval mode and ``(idx,)``, int64 token ids of shape ``(batch, seq_len)``.

    Examples
    --------
    >>> model, (idx,) = gpt("tiny", seq_len=32)
    >>> model(idx).shape
    torch.Size([1, 32, 64])
    """
    cfg = resolve_config(GPTConfig, PRESETS, preset, overrides)
    model = GPT(cfg)
    init_weights_(model, seed)
    idx = torch.randint(
        0, cfg.vocab_size, (cfg.batch, cfg.seq_len), generator=seeded_generator(seed + 1)
    )
    return finalize(model, (idx,), dtype)
