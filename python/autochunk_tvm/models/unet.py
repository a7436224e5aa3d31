"""Stable-Diffusion-style UNet denoiser: ResNet blocks, spatial transformers, skip connections.

One forward pass predicts the noise in a latent image at a timestep, conditioned on a text
context. The paper's UNet setting is Stable Diffusion v1's denoiser (channels 320-1280, 8
heads, context 77 x 768) at image sizes 672-1344; ``paper`` below is that model at 672 pixels
(override ``image_size`` for the larger ones). Sizes are in pixels of the decoded image; the
UNet itself sees the VAE latent, ``image_size // 8`` on a side.

Attention is written out as ``softmax(Q K^T * scale) V`` so that the ``(tokens, tokens)``
score tensor, the activation that dominates memory at large images, is a visible tensor in
the exported graph for chunking to target.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ._common import finalize, init_weights_, resolve_config, seeded_generator

#: Side of a pixel-space image per latent pixel (the VAE's downsampling factor).
LATENT_FACTOR = 8


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Size of a UNet denoiser.

    Attributes
    ----------
    image_size
        Side of the (square) image in pixels; the latent fed to the UNet is
        ``image_size // 8`` on a side.
    in_channels, out_channels
        Latent channels in and predicted-noise channels out (4 for Stable Diffusion).
    block_channels
        Width of each resolution level, from the finest to the coarsest; every level but the
        last halves the resolution on the way down and doubles it on the way up.
    layers_per_block
        ResNet blocks per level on the down path (the up path has one more per level, to
        consume the extra skip left by the downsampling).
    attention_levels
        For each level, whether its ResNet blocks are followed by spatial transformers. The
        middle block always has one.
    num_heads, head_dim
        Set exactly one: a fixed number of heads at every level (SD v1 style, head width is
        channels / heads) or a fixed head width (SD v2 style, heads is channels / head_dim).
    transformer_depth
        Transformer blocks inside each spatial transformer.
    norm_groups
        Groups of every GroupNorm.
    context_len, context_dim
        Shape of the text-encoder states cross-attention reads (77 x 768 for CLIP ViT-L).
    batch
        Latents denoised at once.
    fused_attention
        Use ``F.scaled_dot_product_attention`` (exports as one attention op when the program is
        exported without decomposition) instead of the explicit softmax(QK^T)V.
    """

    image_size: int = 672
    in_channels: int = 4
    out_channels: int = 4
    block_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    num_heads: int | None = 8
    head_dim: int | None = None
    transformer_depth: int = 1
    norm_groups: int = 32
    context_len: int = 77
    context_dim: int = 768
    batch: int = 1
    fused_attention: bool = False

    def __post_init__(self) -> None:
        if self.image_size % LATENT_FACTOR or self.image_size <= 0:
            raise ValueError(
                f"image_size ({self.image_size}) must be a positive multiple of {LATENT_FACTOR}"
            )
        if not self.block_channels:
            raise ValueError("block_channels must name at least one level")
        if len(self.attention_levels) != len(self.block_channels):
            raise ValueError(
                f"attention_levels has {len(self.attention_levels)} entries but block_channels "
                f"has {len(self.block_channels)}; give one flag per level"
            )
        if self.layers_per_block < 1 or self.transformer_depth < 1:
            raise ValueError("layers_per_block and transformer_depth must be at least 1")
        if (self.num_heads is None) == (self.head_dim is None):
            raise ValueError("set exactly one of num_heads and head_dim (the other to None)")
        for ch in self.block_channels:
            if ch % self.norm_groups:
                raise ValueError(
                    f"block channel count {ch} is not divisible by norm_groups ({self.norm_groups})"
                )
        # The middle block attends at the last level's width whatever attention_levels says.
        attended = {ch for ch, a in zip(self.block_channels, self.attention_levels) if a}
        for ch in attended | {self.block_channels[-1]}:
            self.heads_for(ch)

    @property
    def latent_size(self) -> int:
        """Side of the latent the UNet runs on."""
        return self.image_size // LATENT_FACTOR

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding every ResNet block receives."""
        return 4 * self.block_channels[0]

    def heads_for(self, channels: int) -> int:
        """Number of attention heads of a spatial transformer ``channels`` wide."""
        if self.num_heads is not None:
            name, per = "num_heads", self.num_heads
        else:
            name, per = "head_dim", self.head_dim
        assert per is not None  # __post_init__ checked that one of the two is set
        if per <= 0 or channels % per:
            raise ValueError(f"{name} ({per}) must be positive and divide channels ({channels})")
        return per if self.num_heads is not None else channels // per


PRESETS: dict[str, UNetConfig] = {
    "tiny": UNetConfig(
        image_size=64,
        block_channels=(32, 64),
        layers_per_block=1,
        attention_levels=(True, True),
        num_heads=2,
        norm_groups=8,
        context_len=8,
        context_dim=32,
    ),
    "small": UNetConfig(
        image_size=256,
        block_channels=(64, 128, 256),
        layers_per_block=1,
        attention_levels=(True, True, False),
        num_heads=4,
        context_len=77,
        context_dim=128,
    ),
    "paper": UNetConfig(),
}


class TimestepEmbedding(nn.Module):
    """Timestep ``(b,)`` to ``(b, time_embed_dim)``: sinusoidal features, then a 2-layer MLP."""

    def __init__(self, sinusoid_dim: int, embed_dim: int) -> None:
        super().__init__()
        if sinusoid_dim % 2:
            raise ValueError(f"sinusoid width ({sinusoid_dim}) must be even")
        self.sinusoid_dim = sinusoid_dim
        self.linear_1 = nn.Linear(sinusoid_dim, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.sinusoid_dim // 2
        # Frequencies and angles in fp32 whatever the model dtype: t reaches ~1000, where fp16
        # could no longer resolve the phase of the fastest sinusoid. Frequencies are computed
        # here rather than stored, so that casting the module to fp16 cannot round them.
        exponent = torch.arange(half, dtype=torch.float32, device=t.device) * (
            -math.log(10000.0) / half
        )
        angles = t.float()[:, None] * torch.exp(exponent)[None, :]
        emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        emb = emb.to(self.linear_1.weight.dtype)
        return self.linear_2(nn.functional.silu(self.linear_1(emb)))


class ResBlock(nn.Module):
    """Residual conv block: two GroupNorm-SiLU-conv3x3 stages with the timestep added between.

    ``x + f(x, temb)`` where ``x`` goes through a 1x1 conv when the width changes.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm_1 = nn.GroupNorm(groups, in_ch, eps=1e-6)
        self.conv_1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(temb_dim, out_ch)
        self.norm_2 = nn.GroupNorm(groups, out_ch, eps=1e-6)
        self.conv_2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        silu = nn.functional.silu
        h = self.conv_1(silu(self.norm_1(x)))
        # One bias per channel, the same at every pixel: this is how the timestep conditions
        # the convolutions.
        h = h + self.time_proj(silu(temb))[:, :, None, None]
        h = self.conv_2(silu(self.norm_2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention of ``x (b, n, dim)`` over ``context (b, m, context_dim)``.

    Self-attention when ``context`` is None. Q, K, V projections carry no bias, as in SD.
    """

    def __init__(
        self, dim: int, heads: int, context_dim: int | None = None, fused: bool = False
    ) -> None:
        super().__init__()
        self.heads = heads
        self.fused = fused
        kv_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        kv = x if context is None else context
        q = self._split_heads(self.to_q(x))
        k = self._split_heads(self.to_k(kv))
        v = self._split_heads(self.to_v(kv))
        if self.fused:
            y = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // self.heads))
            y = scores.softmax(dim=-1) @ v
        return self.to_out(y.transpose(1, 2).reshape(b, n, c))


class GEGLUFeedForward(nn.Module):
    """``W_out (a * gelu(g))`` where ``[a, g] = W_in x``: a gated MLP 4x the width inside."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.inner = mult * dim
        self.proj_in = nn.Linear(dim, 2 * self.inner)
        self.proj_out = nn.Linear(self.inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj_in(x).split(self.inner, dim=-1)
        return self.proj_out(a * nn.functional.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-norm token block: self-attention, cross-attention to the context, GEGLU MLP."""

    def __init__(self, dim: int, heads: int, context_dim: int, fused: bool) -> None:
        super().__init__()
        self.norm_1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, fused=fused)
        self.norm_2 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, context_dim, fused=fused)
        self.norm_3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_1(x))
        x = x + self.cross_attn(self.norm_2(x), context)
        return x + self.ff(self.norm_3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, as a residual on the map.

    GroupNorm and a 1x1 conv, then every pixel becomes a token (``h * w`` of them) for the
    transformer blocks, then back to a map through another 1x1 conv and added to the input.
    """

    def __init__(self, channels: int, cfg: UNetConfig) -> None:
        super().__init__()
        heads = cfg.heads_for(channels)
        self.norm = nn.GroupNorm(cfg.norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.blocks = nn.ModuleList(
            TransformerBlock(channels, heads, cfg.context_dim, cfg.fused_attention)
            for _ in range(cfg.transformer_depth)
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).reshape(b, c, h * w).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens, context)
        y = tokens.transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    """Halve the resolution (rounding up) with a stride-2 conv3x3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 to ``size``, then conv3x3.

    ``size`` is the skip's resolution; it is one less than twice the input's where the down
    path halved an odd side. Cropping the x2 map then gives exactly nearest interpolation to
    ``size`` (for ``2n - 1`` outputs from ``n`` inputs both pick source pixel ``i // 2``).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        if tuple(x.shape[-2:]) != tuple(size):
            x = x[:, :, : size[0], : size[1]]
        return self.conv(x)


class DownLevel(nn.Module):
    """One resolution of the down path; returns its output and the skips it leaves."""

    def __init__(
        self, in_ch: int, out_ch: int, attend: bool, downsample: bool, cfg: UNetConfig
    ) -> None:
        super().__init__()
        chans = [in_ch] + [out_ch] * cfg.layers_per_block
        temb, groups = cfg.time_embed_dim, cfg.norm_groups
        self.res = nn.ModuleList(
            ResBlock(chans[i], chans[i + 1], temb, groups) for i in range(cfg.layers_per_block)
        )
        self.attn = (
            nn.ModuleList(SpatialTransformer(out_ch, cfg) for _ in range(cfg.layers_per_block))
            if attend
            else None
        )
        self.down = Downsample(out_ch) if downsample else None

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips: list[torch.Tensor] = []
        for i, res in enumerate(self.res):
            x = res(x, temb)
            if self.attn is not None:
                x = self.attn[i](x, context)
            skips.append(x)
        if self.down is not None:
            x = self.down(x)
            skips.append(x)
        return x, skips


class UpLevel(nn.Module):
    """One resolution of the up path: each ResBlock first concatenates a skip on channels."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        skip_chs: list[int],
        attend: bool,
        upsample: bool,
        cfg: UNetConfig,
    ) -> None:
        super().__init__()
        temb, groups = cfg.time_embed_dim, cfg.norm_groups
        res = []
        for skip_ch in skip_chs:
            res.append(ResBlock(in_ch + skip_ch, out_ch, temb, groups))
            in_ch = out_ch
        self.res = nn.ModuleList(res)
        self.attn = (
            nn.ModuleList(SpatialTransformer(out_ch, cfg) for _ in skip_chs) if attend else None
        )
        self.up = Upsample(out_ch) if upsample else None

    def forward(
        self,
        x: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        context: torch.Tensor,
    ) -> torch.Tensor:
        """Consume skips from the end of ``skips`` (popping them), one per ResBlock."""
        for i, res in enumerate(self.res):
            x = res(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attn is not None:
                x = self.attn[i](x, context)
        if self.up is not None:
            # The next level's first skip fixes the resolution to return to.
            x = self.up(x, (skips[-1].shape[-2], skips[-1].shape[-1]))
        return x


class UNet(nn.Module):
    """Noise prediction: latent ``(b, 4, h, w)``, timestep ``(b,)``, context ``(b, m, d)``
    to ``(b, 4, h, w)``.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        chs, n_levels = cfg.block_channels, len(cfg.block_channels)
        self.time_embed = TimestepEmbedding(chs[0], cfg.time_embed_dim)
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)

        # Record every skip's width in the order the down path leaves them, so the up path
        # can size its concatenating ResBlocks by popping them in reverse.
        skip_chs = [chs[0]]
        self.down = nn.ModuleList()
        in_ch = chs[0]
        for level, out_ch in enumerate(chs):
            last = level == n_levels - 1
            self.down.append(DownLevel(in_ch, out_ch, cfg.attention_levels[level], not last, cfg))
            skip_chs += [out_ch] * (cfg.layers_per_block + (0 if last else 1))
            in_ch = out_ch

        self.mid_res_1 = ResBlock(in_ch, in_ch, cfg.time_embed_dim, cfg.norm_groups)
        self.mid_attn = SpatialTransformer(in_ch, cfg)
        self.mid_res_2 = ResBlock(in_ch, in_ch, cfg.time_embed_dim, cfg.norm_groups)

        self.up = nn.ModuleList()
        for level in reversed(range(n_levels)):
            out_ch = chs[level]
            taken = [skip_chs.pop() for _ in range(cfg.layers_per_block + 1)]
            self.up.append(
                UpLevel(in_ch, out_ch, taken, cfg.attention_levels[level], level > 0, cfg)
            )
            in_ch = out_ch
        assert not skip_chs, "every down-path skip must be consumed by the up path"

        self.norm_out = nn.GroupNorm(cfg.norm_groups, in_ch, eps=1e-6)
        self.conv_out = nn.Conv2d(in_ch, cfg.out_channels, 3, padding=1)

    def forward(
        self, latent: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        temb = self.time_embed(timestep)
        x = self.conv_in(latent)
        skips = [x]
        for level in self.down:
            x, level_skips = level(x, temb, context)
            skips += level_skips
        x = self.mid_res_1(x, temb)
        x = self.mid_attn(x, context)
        x = self.mid_res_2(x, temb)
        for level in self.up:
            x = level(x, skips, temb, context)
        return self.conv_out(nn.functional.silu(self.norm_out(x)))


def unet(
    preset: str = "tiny", *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides
) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Build a UNet denoiser and one denoising step's inputs for it.

    Parameters
    ----------
    preset
        ``"tiny"`` (tests; 8x8 latent), ``"small"`` (CPU benchmarks; 32x32 latent) or
        ``"paper"`` (SD v1 channels, 8 heads, context 77 x 768, 672 pixels = 84x84 latent).
    seed
        Seeds weights and inputs; the same seed gives the same model and inputs.
    dtype
        Floating dtype of weights and inputs. Timesteps are whole numbers below 1000, exact
        in fp16 and bf16 too; the sinusoidal embedding is computed in fp32 regardless.
    **overrides
        Fields of :class:`UNetConfig` replacing the preset's, e.g. ``image_size=1344``.

    Returns
    -------
    (module, args)
        The model in eval mode and ``(latent, timestep, context)``: the noisy latent
        ``(batch, in_channels, s, s)`` with ``s = image_size // 8``, timesteps ``(batch,)``
        as floats, and text-encoder states ``(batch, context_len, context_dim)``.

    Examples
    --------
    >>> model, (latent, t, ctx) = unet("tiny")
    >>> model(latent, t, ctx).shape
    torch.Size([1, 4, 8, 8])
    """
    cfg = resolve_config(UNetConfig, PRESETS, preset, overrides)
    model = UNet(cfg)
    init_weights_(model, seed)
    gen = seeded_generator(seed + 1)
    s = cfg.latent_size
    latent = torch.randn(cfg.batch, cfg.in_channels, s, s, generator=gen)
    timestep = torch.randint(0, 1000, (cfg.batch,), generator=gen).to(torch.float32)
    context = torch.randn(cfg.batch, cfg.context_len, cfg.context_dim, generator=gen)
    model, (latent, timestep, context) = finalize(model, (latent, timestep, context), dtype)
    return model, (latent, timestep, context)
