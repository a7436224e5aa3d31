"""Vision Transformer (ViT): patch embedding, class token, pre-norm encoder blocks, head.

Long token sequences come from large images with small patches: a 1024 px image with 16 px
patches is 4096 tokens. ``paper`` is ViT-Base width at that size with 2 encoder blocks (the
paper keeps its transformer experiments shallow, as for GPT).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ._common import finalize, init_weights_, resolve_config, seeded_generator


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Size of a ViT classifier.

    Attributes
    ----------
    image_size, patch_size, channels
        Input image side (square) and patch side in pixels; ``image_size`` must be a multiple of
        ``patch_size``. Token count is ``(image_size // patch_size) ** 2 + 1``.
    dim, depth, heads, mlp_ratio
        Width, number of encoder blocks, attention heads, MLP hidden width / dim.
    num_classes, batch
        Classifier width and images per batch.
    fused_attention
        Use ``F.scaled_dot_product_attention`` instead of the explicit softmax(QK^T)V.
    """

    image_size: int = 1024
    patch_size: int = 16
    channels: int = 3
    dim: int = 768
    depth: int = 2
    heads: int = 12
    mlp_ratio: int = 4
    num_classes: int = 1000
    batch: int = 1
    fused_attention: bool = False

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size "
                f"({self.patch_size})"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


PRESETS: dict[str, ViTConfig] = {
    "tiny": ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4, num_classes=10),
    "small": ViTConfig(image_size=256, patch_size=8, dim=128, depth=2, heads=4, num_classes=100),
    "paper": ViTConfig(),
}


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.fused = cfg.fused_attention
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.fused:
            y = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // self.heads))
            y = att.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim)
        self.fc2 = nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Images ``(batch, channels, H, W)`` to class logits ``(batch, num_classes)``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(
            cfg.channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim))
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


def vit(
    preset: str = "tiny", *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build a ViT classifier and an image batch for it.

    Parameters
    ----------
    preset
        ``"tiny"`` (tests), ``"small"`` or ``"paper"`` (ViT-Base width, 2 blocks, 1024 px images
        with 16 px patches: 4097 tokens).
    seed
        Seeds weights and inputs.
    dtype
        Floating dtype of weights and activations.
    **overrides
        Fields of :class:`ViTConfig` replacing the preset's, e.g. ``image_size=2048``.

    Returns
    -------
    (module, args)
        The model in eval mode and ``(images,)`` of shape ``(batch, channels, size, size)``.
    """
    cfg = resolve_config(ViTConfig, PRESETS, preset, overrides)
    model = ViT(cfg)
    init_weights_(model, seed)
    shape = (cfg.batch, cfg.channels, cfg.image_size, cfg.image_size)
    images = torch.randn(shape, generator=seeded_generator(seed + 1))
    return finalize(model, (images,), dtype)
