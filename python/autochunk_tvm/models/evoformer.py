"""AlphaFold-2 Evoformer: MSA and pair representations updated by attention and triangle ops.

Written from the AlphaFold 2 supplementary information (Jumper et al., 2021, section 1.6);
"Alg. N" below refers to its algorithm numbers. One Evoformer block (Alg. 6) runs, in order:

    msa  += MSARowAttentionWithPairBias(msa, pair)      Alg. 7
    msa  += MSAColumnAttention(msa)                     Alg. 8
    msa  += Transition(msa)                             Alg. 9
    pair += OuterProductMean(msa)                       Alg. 10
    pair += TriangleMultiplication(pair, outgoing)      Alg. 11
    pair += TriangleMultiplication(pair, incoming)      Alg. 12
    pair += TriangleAttention(pair, starting node)      Alg. 13
    pair += TriangleAttention(pair, ending node)        Alg. 14
    pair += Transition(pair)                            Alg. 15

The model is inference-only: dropout is omitted, there is no batch dimension and no masks
(every MSA row and residue is valid). ``paper`` below is one block at AlphaFold's widths with
256 sequences and 256 residues; override ``n_res`` (up to 1280 in the paper's experiments) and
``n_blocks`` (48 in AlphaFold) for the larger settings.

``hand_chunked=True`` builds the same weights and math, but the attention modules, the two
transitions and the outer product mean run over their leading batch-like dimension in slices
of ``chunk_size``, the way OpenFold's ``chunk_layer`` does. It is the expert baseline that
automatic chunking of the plain model is compared against.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from ._common import finalize, init_weights_, resolve_config, seeded_generator


@dataclasses.dataclass(frozen=True)
class EvoformerConfig:
    """Size of an Evoformer stack and of the inputs fed to it.

    Inputs are ``msa`` of shape ``(n_seq, n_res, c_m)`` and ``pair`` of shape
    ``(n_res, n_res, c_z)``, with no batch dimension and no masks.

    Attributes
    ----------
    c_m, c_z
        Channels of the MSA and of the pair representation.
    n_seq, n_res
        MSA depth (number of sequences) and number of residues.
    n_blocks
        Number of Evoformer blocks in the stack.
    n_heads_msa, c_hidden_msa
        Heads and per-head width of MSA row and column attention.
    n_heads_tri, c_hidden_tri
        Heads and per-head width of both triangle attentions.
    c_hidden_opm
        Width of the two projections whose outer product the outer product mean averages.
    c_hidden_mul
        Width of the edge projections in both triangle multiplicative updates.
    transition_factor
        Hidden width of the MSA and pair transitions as a multiple of their input width.
    chunk_size
        Slice length of the hand-chunked variant along each module's leading batch-like
        dimension; ``None`` disables chunking. Ignored unless the model is built with
        ``hand_chunked=True``.
    """

    c_m: int = 256
    c_z: int = 128
    n_seq: int = 256
    n_res: int = 256
    n_blocks: int = 1
    n_heads_msa: int = 8
    c_hidden_msa: int = 32
    n_heads_tri: int = 4
    c_hidden_tri: int = 32
    c_hidden_opm: int = 32
    c_hidden_mul: int = 128
    transition_factor: int = 4
    chunk_size: int | None = 64

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "chunk_size" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"EvoformerConfig.{field.name} must be a positive int, got {value!r}"
                    + (" (or None to disable chunking)" if field.name == "chunk_size" else "")
                )


PRESETS: dict[str, EvoformerConfig] = {
    # chunk_size 5 divides neither n_seq nor n_res, so the tiny hand-chunked model also
    # exercises a short last slice.
    "tiny": EvoformerConfig(
        c_m=16,
        c_z=8,
        n_seq=8,
        n_res=12,
        n_blocks=1,
        n_heads_msa=2,
        c_hidden_msa=4,
        n_heads_tri=2,
        c_hidden_tri=4,
        c_hidden_opm=4,
        c_hidden_mul=8,
        chunk_size=5,
    ),
    "small": EvoformerConfig(
        c_m=64,
        c_z=32,
        n_seq=64,
        n_res=64,
        n_blocks=1,
        n_heads_msa=8,
        c_hidden_msa=8,
        n_heads_tri=4,
        c_hidden_tri=8,
        c_hidden_opm=16,
        c_hidden_mul=32,
        chunk_size=16,
    ),
    "paper": EvoformerConfig(),
}


def chunk_apply(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk_size: int | None
) -> torch.Tensor:
    """``fn(x)`` computed over slices of ``x``'s first dimension and concatenated.

    This is OpenFold's ``chunk_layer`` reduced to what the Evoformer needs: ``fn`` must treat
    the rows of its argument independently, so slicing only bounds the size of ``fn``'s
    intermediates and does not change the result. The last slice may be shorter than
    ``chunk_size``. ``None``, or a size covering the whole dimension, calls ``fn`` once.
    """
    n = x.shape[0]
    if chunk_size is None or chunk_size >= n:
        return fn(x)
    return torch.cat([fn(x[i : i + chunk_size]) for i in range(0, n, chunk_size)], dim=0)


class GatedSelfAttention(nn.Module):
    """Multi-head gated self-attention along the second axis of a ``(B, N, c_in)`` input.

    The core shared by Alg. 7, 8, 13 and 14: per head, ``softmax(q k^T / sqrt(c) + bias) v``,
    gated by ``sigmoid(Linear(x))`` and projected back to ``c_in``. q, k, v carry no bias as
    in the paper. ``bias``, if given, is ``(heads, N, N)`` and shared by all ``B`` rows.
    """

    def __init__(self, c_in: int, n_heads: int, c_hidden: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.c_hidden = c_hidden
        width = n_heads * c_hidden
        self.linear_q = nn.Linear(c_in, width, bias=False)
        self.linear_k = nn.Linear(c_in, width, bias=False)
        self.linear_v = nn.Linear(c_in, width, bias=False)
        self.linear_g = nn.Linear(c_in, width)
        self.linear_o = nn.Linear(width, c_in)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, N, H * c)`` to ``(B, H, N, c)``."""
        b, n, _ = t.shape
        return t.reshape(b, n, self.n_heads, self.c_hidden).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        # Scaling q rather than the logits keeps the scaled tensor at (B, H, N, c), not N x N.
        q = self._heads(self.linear_q(x)) * (self.c_hidden**-0.5)
        k = self._heads(self.linear_k(x))
        v = self._heads(self.linear_v(x))
        logits = torch.matmul(q, k.transpose(-1, -2))
        if bias is not None:
            logits = logits + bias
        o = torch.matmul(torch.softmax(logits, dim=-1), v)
        o = o.permute(0, 2, 1, 3).reshape(b, n, self.n_heads * self.c_hidden)
        return self.linear_o(torch.sigmoid(self.linear_g(x)) * o)


class MSARowAttentionWithPairBias(nn.Module):
    """Alg. 7: each MSA row attends over residues, biased by a projection of the pair.

    ``(n_seq, n_res, c_m), (n_res, n_res, c_z) -> (n_seq, n_res, c_m)``, the update to add to
    the MSA. Chunked over MSA rows; the pair bias is computed once and shared by all slices.
    """

    def __init__(self, cfg: EvoformerConfig, chunk_size: int | None = None) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.layer_norm_m = nn.LayerNorm(cfg.c_m)
        self.layer_norm_z = nn.LayerNorm(cfg.c_z)
        self.linear_b = nn.Linear(cfg.c_z, cfg.n_heads_msa, bias=False)
        self.mha = GatedSelfAttention(cfg.c_m, cfg.n_heads_msa, cfg.c_hidden_msa)

    def forward(self, msa: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        bias = self.linear_b(self.layer_norm_z(pair)).permute(2, 0, 1)  # (H, i, j)
        msa = self.layer_norm_m(msa)
        return chunk_apply(lambda rows: self.mha(rows, bias), msa, self.chunk_size)


class MSAColumnAttention(nn.Module):
    """Alg. 8: each MSA column (residue) attends over the sequences, without pair bias.

    ``(n_seq, n_res, c_m) -> (n_seq, n_res, c_m)``. Implemented as row attention on the
    transposed MSA, so chunking slices residues.
    """

    def __init__(self, cfg: EvoformerConfig, chunk_size: int | None = None) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.layer_norm_m = nn.LayerNorm(cfg.c_m)
        self.mha = GatedSelfAttention(cfg.c_m, cfg.n_heads_msa, cfg.c_hidden_msa)

    def forward(self, msa: torch.Tensor) -> torch.Tensor:
        cols = self.layer_norm_m(msa).transpose(0, 1)  # (n_res, n_seq, c_m)
        return chunk_apply(self.mha, cols, self.chunk_size).transpose(0, 1)


class Transition(nn.Module):
    """Alg. 9 (MSA) and Alg. 15 (pair): LayerNorm, then a ReLU MLP widened ``factor`` times.

    Acts on the last axis only, so chunking over the first axis (MSA rows or pair rows) is
    exact; the LayerNorm is chunked too since it is per position.
    """

    def __init__(self, c: int, factor: int, chunk_size: int | None = None) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.layer_norm = nn.LayerNorm(c)
        self.linear_1 = nn.Linear(c, factor * c)
        self.linear_2 = nn.Linear(factor * c, c)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(torch.relu(self.linear_1(self.layer_norm(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return chunk_apply(self._mlp, x, self.chunk_size)


class OuterProductMean(nn.Module):
    """Alg. 10: the pair update ``Linear(flatten(mean_s a_si (x) b_sj)))`` from the MSA.

    ``(n_seq, n_res, c_m) -> (n_res, n_res, c_z)``. Chunked over the first residue ``i``:
    the ``(n_res, n_res, c * c)`` outer-product tensor is the large intermediate, and each
    slice only needs its rows of ``a`` against all of ``b``.
    """

    def __init__(self, cfg: EvoformerConfig, chunk_size: int | None = None) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.c_hidden = cfg.c_hidden_opm
        self.layer_norm = nn.LayerNorm(cfg.c_m)
        self.linear_a = nn.Linear(cfg.c_m, cfg.c_hidden_opm)
        self.linear_b = nn.Linear(cfg.c_m, cfg.c_hidden_opm)
        self.linear_out = nn.Linear(cfg.c_hidden_opm**2, cfg.c_z)

    def forward(self, msa: torch.Tensor) -> torch.Tensor:
        n_seq, n_res, _ = msa.shape
        c = self.c_hidden
        msa = self.layer_norm(msa)
        a = self.linear_a(msa).permute(1, 2, 0)  # (i, c, s)
        b = self.linear_b(msa).reshape(n_seq, n_res * c)  # (s, j * c)

        def rows(a_rows: torch.Tensor) -> torch.Tensor:
            n_i = a_rows.shape[0]
            # One matmul contracts over sequences for every (i, c, j, d) at once; the mean
            # is taken before the projection, as in the paper (OpenFold divides after it).
            outer = torch.matmul(a_rows.reshape(n_i * c, n_seq), b) * (1.0 / n_seq)
            outer = outer.reshape(n_i, c, n_res, c).permute(0, 2, 1, 3)
            return self.linear_out(outer.reshape(n_i, n_res, c * c))

        return chunk_apply(rows, a, self.chunk_size)


class TriangleMultiplication(nn.Module):
    """Alg. 11 (outgoing) and Alg. 12 (incoming) triangle multiplicative updates.

    ``(n_res, n_res, c_z) -> (n_res, n_res, c_z)``. Edge ``ij`` is updated from the edges to a
    third node ``k``: ``sum_k a_ik * b_jk`` (outgoing) or ``sum_k a_ki * b_kj`` (incoming),
    with gated projections ``a``, ``b`` and a sigmoid output gate. Not chunked by the hand-
    chunked variant, which follows OpenFold's default ``chunk_layer`` coverage.
    """

    def __init__(self, cfg: EvoformerConfig, *, outgoing: bool) -> None:
        super().__init__()
        self.outgoing = outgoing
        c_z, c = cfg.c_z, cfg.c_hidden_mul
        self.layer_norm_in = nn.LayerNorm(c_z)
        self.linear_a_g = nn.Linear(c_z, c)
        self.linear_a_p = nn.Linear(c_z, c)
        self.linear_b_g = nn.Linear(c_z, c)
        self.linear_b_p = nn.Linear(c_z, c)
        self.linear_g = nn.Linear(c_z, c_z)
        self.layer_norm_out = nn.LayerNorm(c)
        self.linear_z = nn.Linear(c, c_z)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        z = self.layer_norm_in(pair)
        a = torch.sigmoid(self.linear_a_g(z)) * self.linear_a_p(z)
        b = torch.sigmoid(self.linear_b_g(z)) * self.linear_b_p(z)
        # Channel-first batched matmuls: (c, i, k) @ (c, k, j) -> (c, i, j).
        if self.outgoing:
            x = torch.matmul(a.permute(2, 0, 1), b.permute(2, 1, 0))
        else:
            x = torch.matmul(a.permute(2, 1, 0), b.permute(2, 0, 1))
        x = self.linear_z(self.layer_norm_out(x.permute(1, 2, 0)))
        return torch.sigmoid(self.linear_g(z)) * x


class TriangleAttention(nn.Module):
    """Alg. 13 (around the starting node) and Alg. 14 (around the ending node).

    ``(n_res, n_res, c_z) -> (n_res, n_res, c_z)``. Starting node: edge ``ij`` attends over
    edges ``ik`` with bias from edge ``jk``. The ending-node form is the starting-node form
    applied to the transposed pair and transposed back. Chunked over the first (row) index of
    the possibly-transposed pair; the bias is computed once and shared by all slices.
    """

    def __init__(
        self, cfg: EvoformerConfig, *, starting: bool, chunk_size: int | None = None
    ) -> None:
        super().__init__()
        self.starting = starting
        self.chunk_size = chunk_size
        self.layer_norm = nn.LayerNorm(cfg.c_z)
        self.linear_b = nn.Linear(cfg.c_z, cfg.n_heads_tri, bias=False)
        self.mha = GatedSelfAttention(cfg.c_z, cfg.n_heads_tri, cfg.c_hidden_tri)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        if not self.starting:
            pair = pair.transpose(0, 1)
        z = self.layer_norm(pair)
        bias = self.linear_b(z).permute(2, 0, 1)  # (H, j, k)
        out = chunk_apply(lambda rows: self.mha(rows, bias), z, self.chunk_size)
        return out if self.starting else out.transpose(0, 1)


class EvoformerBlock(nn.Module):
    """Alg. 6, one iteration: ``(msa, pair) -> (msa, pair)`` with residual updates.

    ``chunk_size`` (``None``: no chunking) is given to every module that the hand-chunked
    variant chunks.
    """

    def __init__(self, cfg: EvoformerConfig, chunk_size: int | None = None) -> None:
        super().__init__()
        self.msa_att_row = MSARowAttentionWithPairBias(cfg, chunk_size)
        self.msa_att_col = MSAColumnAttention(cfg, chunk_size)
        self.msa_transition = Transition(cfg.c_m, cfg.transition_factor, chunk_size)
        self.outer_product_mean = OuterProductMean(cfg, chunk_size)
        self.tri_mul_out = TriangleMultiplication(cfg, outgoing=True)
        self.tri_mul_in = TriangleMultiplication(cfg, outgoing=False)
        self.tri_att_start = TriangleAttention(cfg, starting=True, chunk_size=chunk_size)
        self.tri_att_end = TriangleAttention(cfg, starting=False, chunk_size=chunk_size)
        self.pair_transition = Transition(cfg.c_z, cfg.transition_factor, chunk_size)

    def forward(self, msa: torch.Tensor, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        msa = msa + self.msa_att_row(msa, pair)
        msa = msa + self.msa_att_col(msa)
        msa = msa + self.msa_transition(msa)
        pair = pair + self.outer_product_mean(msa)
        pair = pair + self.tri_mul_out(pair)
        pair = pair + self.tri_mul_in(pair)
        pair = pair + self.tri_att_start(pair)
        pair = pair + self.tri_att_end(pair)
        pair = pair + self.pair_transition(pair)
        return msa, pair


class Evoformer(nn.Module):
    """A stack of ``cfg.n_blocks`` Evoformer blocks: ``(msa, pair) -> (msa, pair)``.

    ``hand_chunked=True`` chunks with ``cfg.chunk_size``; parameters are the same either way,
    so the two variants load each other's state dicts.
    """

    def __init__(self, cfg: EvoformerConfig, *, hand_chunked: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        chunk_size = cfg.chunk_size if hand_chunked else None
        self.blocks = nn.ModuleList(EvoformerBlock(cfg, chunk_size) for _ in range(cfg.n_blocks))

    def set_chunk_size(self, chunk_size: int | None) -> None:
        """Change the slice length of every chunkable module (``None`` turns chunking off)."""
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        for module in self.modules():
            if hasattr(module, "chunk_size"):
                module.chunk_size = chunk_size

    def forward(self, msa: torch.Tensor, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            msa, pair = block(msa, pair)
        return msa, pair


def evoformer(
    preset: str = "tiny",
    *,
    hand_chunked: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **overrides,
) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """Build an Evoformer stack and an ``(msa, pair)`` input for it.

    Parameters
    ----------
    preset
        ``"tiny"`` (tests), ``"small"`` (CPU benchmarks) or ``"paper"`` (AlphaFold widths,
        256 sequences, 256 residues, one block).
    hand_chunked
        Chunk the attention modules, transitions and outer product mean over slices of
        ``chunk_size`` as OpenFold does. Weights and inputs do not depend on this flag, so
        with the same seed both variants compute the same outputs.
    seed
        Seeds weights and inputs; the same seed gives the same model and inputs.
    dtype
        Floating dtype of weights and activations.
    **overrides
        Fields of :class:`EvoformerConfig` replacing the preset's, e.g. ``n_res=512``.

    Returns
    -------
    (module, args)
        The model in eval mode and ``(msa, pair)`` of shapes ``(n_seq, n_res, c_m)`` and
        ``(n_res, n_res, c_z)``.

    Examples
    --------
    >>> model, (msa, pair) = evoformer("tiny", n_res=16)
    >>> [t.shape for t in model(msa, pair)]
    [torch.Size([8, 16, 16]), torch.Size([16, 16, 8])]
    """
    cfg = resolve_config(EvoformerConfig, PRESETS, preset, overrides)
    model = Evoformer(cfg, hand_chunked=hand_chunked)
    init_weights_(model, seed)
    gen = seeded_generator(seed + 1)
    # Unit-variance inputs: every module starts with a LayerNorm, so the scale mainly sets
    # how large the residual stream is relative to the (small, std 0.02) updates.
    msa = torch.randn(cfg.n_seq, cfg.n_res, cfg.c_m, generator=gen)
    pair = torch.randn(cfg.n_res, cfg.n_res, cfg.c_z, generator=gen)
    return finalize(model, (msa, pair), dtype)


class PairUpdate(nn.Module):
    """The Evoformer's triangle multiplicative updates and pair transition alone, with their
    residuals: pair in, pair out. No attention, so the pair-size projections, gates and the
    contraction over the third node set the memory (the case the memory benchmark adds)."""

    def __init__(self, cfg: EvoformerConfig) -> None:
        super().__init__()
        self.tri_mul_out = TriangleMultiplication(cfg, outgoing=True)
        self.tri_mul_in = TriangleMultiplication(cfg, outgoing=False)
        self.pair_transition = Transition(cfg.c_z, cfg.transition_factor)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        pair = pair + self.tri_mul_out(pair)
        pair = pair + self.tri_mul_in(pair)
        return pair + self.pair_transition(pair)


def pair_update(
    preset: str = "tiny", *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides
) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """Build a :class:`PairUpdate` and a ``(n_res, n_res, c_z)`` pair input for it; presets
    and overrides as for :func:`evoformer` (only the pair widths are used)."""
    cfg = resolve_config(EvoformerConfig, PRESETS, preset, overrides)
    model = PairUpdate(cfg)
    init_weights_(model, seed)
    pair = torch.randn(cfg.n_res, cfg.n_res, cfg.c_z, generator=seeded_generator(seed + 1))
    return finalize(model, (pair,), dtype)
