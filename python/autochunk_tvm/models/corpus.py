"""Real architectures as their libraries build them, for trying AutoChunk on models it was not
written against.

Each entry builds a model from its library's own config class with random weights (nothing is
downloaded) at a size where attention or pair tensors dominate activation memory, and returns
``(module, example_args)`` like the zoo: ``module`` in eval mode, with a forward that takes
positional tensors and returns tensors (a thin wrapper picks ``logits``/``sample`` from the
library's output object). Attention is built in its eager form (``attn_implementation=
"eager"``), the form that exports as matmul + softmax.

The libraries are optional: :func:`corpus_model` raises ``ImportError`` naming the one to
install. ``transformers`` and ``diffusers`` install as usual; ``openfold3`` is installed with
``pip install --no-deps openfold3`` (its full requirements pull CUDA kernels and data tools)
next to ``ml-collections``, ``gemmi`` and ``biotite``, which its latent blocks import.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable

import torch

Built = tuple[torch.nn.Module, tuple[torch.Tensor, ...]]


@dataclasses.dataclass(frozen=True)
class CorpusModel:
    """One corpus entry: its name, the package that builds it, and the builder."""

    name: str
    library: str
    build: Callable[..., Built]  # keyword size arguments, all with test-size defaults
    description: str


class _Logits(torch.nn.Module):
    """``model(input_ids, [attention_mask]).logits`` (or another output field)."""

    def __init__(self, model: torch.nn.Module, field: str = "logits"):
        super().__init__()
        self.model, self.field = model, field

    def forward(self, input_ids, attention_mask=None):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return getattr(out, self.field)


def _randomize(block: torch.nn.Module, std: float = 0.1) -> None:
    """Folding blocks initialize several output projections to zero (OpenFold's "final" and
    "gating" inits, ESMFold's too), which would make parts of a block an identity: draw every
    weight matrix from N(0, std) instead; biases and norms keep their defaults."""
    with torch.no_grad():
        for p in block.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)


# -- transformers --------------------------------------------------------------------------
def gpt2(masked: bool = False, seq_len: int = 512) -> Built:
    """``GPT2LMHeadModel``, 2 layers, d 128, 4 heads; ``masked`` passes an attention mask."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=128,
        n_head=4,
        n_positions=seq_len,
        vocab_size=1000,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    model = _Logits(GPT2LMHeadModel(config)).eval()
    ids = torch.randint(0, 1000, (1, seq_len))
    return model, ((ids, torch.ones(1, seq_len, dtype=torch.int64)) if masked else (ids,))


def llama(seq_len: int = 512, n_layers: int = 2) -> Built:
    """``LlamaForCausalLM``, ``n_layers`` layers, d 128, 4 query heads sharing 2 key/value
    heads (GQA), with an attention mask."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=n_layers,
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=seq_len,
        vocab_size=1000,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation="eager",
    )
    model = _Logits(LlamaForCausalLM(config)).eval()
    ids = torch.randint(0, 1000, (1, seq_len))
    return model, (ids, torch.ones(1, seq_len, dtype=torch.int64))


class _Encoder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return self.model(*inputs).last_hidden_state


def bert(seq_len: int = 512) -> Built:
    """``BertModel``, 2 layers, d 128, 4 heads, with an attention mask."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        num_hidden_layers=2,
        hidden_size=128,
        intermediate_size=512,
        num_attention_heads=4,
        max_position_embeddings=seq_len,
        vocab_size=1000,
        attn_implementation="eager",
    )
    model = _Encoder(BertModel(config, add_pooling_layer=False)).eval()
    ids = torch.randint(0, 1000, (1, seq_len))
    return model, (ids, torch.ones(1, seq_len, dtype=torch.int64))


def vit(image_size: int = 192) -> Built:
    """``ViTModel``, 2 layers, d 128, 4 heads, patch 8 (577 tokens at 192 px)."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        num_hidden_layers=2,
        hidden_size=128,
        intermediate_size=512,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
        attn_implementation="eager",
    )
    model = _Encoder(ViTModel(config, add_pooling_layer=False)).eval()
    return model, (torch.randn(1, 3, image_size, image_size),)


class _EsmFoldBlock(torch.nn.Module):
    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block

    def forward(self, sequence_state, pairwise_state, mask):
        return self.block(sequence_state, pairwise_state, mask=mask, chunk_size=None)


def esmfold_block(n_res: int = 64) -> Built:
    """ESMFold's folding-trunk block (``EsmFoldTriangularSelfAttentionBlock``): gated sequence
    attention with pair bias, triangle multiplications and attentions, MLPs. Inputs
    ``(sequence_state, pairwise_state, mask)``."""
    from transformers.models.esm.configuration_esm import TrunkConfig
    from transformers.models.esm.modeling_esmfold import EsmFoldTriangularSelfAttentionBlock

    torch.manual_seed(0)
    config = TrunkConfig(
        num_blocks=1,
        sequence_state_dim=64,
        pairwise_state_dim=32,
        sequence_head_width=16,
        pairwise_head_width=16,
        dropout=0.0,
    )
    block = EsmFoldTriangularSelfAttentionBlock(config)
    _randomize(block)  # ESMFold zero-initializes its output projections
    args = (torch.randn(1, n_res, 64), torch.randn(1, n_res, n_res, 32), torch.ones(1, n_res))
    return _EsmFoldBlock(block).eval(), args


# -- diffusers -----------------------------------------------------------------------------
class _Sample(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return self.model(*inputs, return_dict=False)[0]


def unet2d(latent: int = 32) -> Built:
    """``UNet2DConditionModel``, channels (32, 64), cross-attention to 8 text tokens, on a
    ``latent`` x ``latent`` 4-channel latent. Inputs ``(sample, timestep, text)``."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    model.set_attn_processor(AttnProcessor())  # matmul + softmax, not SDPA
    args = (torch.randn(1, 4, latent, latent), torch.tensor([10]), torch.randn(1, 8, 32))
    return _Sample(model).eval(), args


def sd3_transformer(latent: int = 32) -> Built:
    """``SD3Transformer2DModel``, 2 joint blocks, 2 heads of 32, patch 2, on a ``latent`` x
    ``latent`` latent (256 image tokens at 32) with 8 text tokens. Inputs ``(hidden_states,
    encoder_hidden_states, pooled_projections, timestep)``."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = SD3Transformer2DModel(
        sample_size=latent,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=32,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=64,
        pooled_projection_dim=32,
        out_channels=4,
        pos_embed_max_size=latent,
    )
    args = (
        torch.randn(1, 4, latent, latent),
        torch.randn(1, 8, 32),
        torch.randn(1, 32),
        torch.tensor([10]),
    )
    return _Sample(model).eval(), args


# -- openfold3 -----------------------------------------------------------------------------
# openfold3 is installed with --no-deps (its full requirements pull CUDA kernels and data
# tools); the latent blocks need only ml-collections, gemmi and biotite besides torch.
_OPENFOLD_KERNELS_OFF = dict(
    chunk_size=None,
    use_deepspeed_evo_attention=False,
    use_cueq_triangle_kernels=False,
    use_triton_triangle_kernels=False,
    use_lma=False,
    inplace_safe=False,
    _mask_trans=True,
    _attn_chunk_size=None,
)


class _EvoformerBlock(torch.nn.Module):
    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block

    def forward(self, m, z, msa_mask, pair_mask):
        return self.block(
            m,
            z,
            msa_mask=msa_mask,
            pair_mask=pair_mask,
            transition_ckpt_chunk_size=None,
            _offload_inference=False,
            **_OPENFOLD_KERNELS_OFF,
        )


class _PairformerBlock(torch.nn.Module):
    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block

    def forward(self, s, z, single_mask, pair_mask):
        return self.block(
            s, z, single_mask=single_mask, pair_mask=pair_mask, **_OPENFOLD_KERNELS_OFF
        )


def openfold_evoformer(n_seq: int = 16, n_res: int = 64, c_m: int = 32, c_z: int = 16):
    """openfold3's AF2-style ``EvoformerBlock``: MSA row attention with pair bias, column
    attention, transition, outer-product mean, triangle multiplications and attentions, pair
    transition. Inputs ``(m, z, msa_mask, pair_mask)``, all-ones masks."""
    from openfold3.core.model.latent.evoformer import EvoformerBlock

    torch.manual_seed(0)
    block = EvoformerBlock(
        c_m=c_m,
        c_z=c_z,
        c_hidden_msa_att=8,
        c_hidden_opm=8,
        c_hidden_mul=16,
        c_hidden_pair_att=8,
        no_heads_msa=4,
        no_heads_pair=2,
        transition_type="relu",
        transition_n=4,
        msa_dropout=0.15,
        pair_dropout=0.25,
        no_column_attention=False,
        opm_first=False,
        fuse_projection_weights=False,
        inf=1e9,
        eps=1e-8,
    )
    _randomize(block)
    args = (
        torch.randn(n_seq, n_res, c_m),
        torch.randn(n_res, n_res, c_z),
        torch.ones(n_seq, n_res),
        torch.ones(n_res, n_res),
    )
    return _EvoformerBlock(block).eval(), args


def openfold_pairformer(n_res: int = 64, c_s: int = 32, c_z: int = 16):
    """openfold3's AF3 ``PairFormerBlock``: triangle multiplications and attentions, a SwiGLU
    pair transition, single attention with pair bias, a single transition. Inputs
    ``(s, z, single_mask, pair_mask)``, all-ones masks."""
    from openfold3.core.model.latent.pairformer import PairFormerBlock

    torch.manual_seed(0)
    block = PairFormerBlock(
        c_s=c_s,
        c_z=c_z,
        c_hidden_pair_bias=8,
        no_heads_pair_bias=4,
        c_hidden_mul=16,
        c_hidden_pair_att=8,
        no_heads_pair=2,
        transition_type="swiglu",
        transition_n=4,
        pair_dropout=0.25,
        fuse_projection_weights=False,
        inf=1e9,
    )
    _randomize(block)
    args = (
        torch.randn(n_res, c_s),
        torch.randn(n_res, n_res, c_z),
        torch.ones(n_res),
        torch.ones(n_res, n_res),
    )
    return _PairformerBlock(block).eval(), args


CORPUS: dict[str, CorpusModel] = {
    m.name: m
    for m in [
        CorpusModel("gpt2", "transformers", gpt2, "GPT2LMHeadModel, 2 layers, seq 512"),
        CorpusModel(
            "gpt2_masked",
            "transformers",
            lambda **size: gpt2(masked=True, **size),
            "GPT2LMHeadModel with an attention mask, 2 layers, seq 512",
        ),
        CorpusModel("llama", "transformers", llama, "LlamaForCausalLM (GQA, mask), seq 512"),
        CorpusModel("bert", "transformers", bert, "BertModel (mask), 2 layers, seq 512"),
        CorpusModel("vit", "transformers", vit, "ViTModel, 2 layers, 192 px, patch 8"),
        CorpusModel("esmfold_block", "transformers", esmfold_block, "ESMFold trunk block, L 64"),
        CorpusModel("unet2d", "diffusers", unet2d, "UNet2DConditionModel (32, 64), 32x32 latent"),
        CorpusModel(
            "sd3_transformer", "diffusers", sd3_transformer, "SD3Transformer2DModel, 2 blocks"
        ),
        CorpusModel(
            "openfold_evoformer", "openfold3", openfold_evoformer, "EvoformerBlock, S 16, L 64"
        ),
        CorpusModel(
            "openfold_pairformer", "openfold3", openfold_pairformer, "PairFormerBlock, L 64"
        ),
    ]
}


def missing_library(name: str) -> str | None:
    """The package entry ``name`` needs that is not installed, or None."""
    library = CORPUS[name].library
    return library if importlib.util.find_spec(library) is None else None


def corpus_model(name: str, **size: int) -> Built:
    """Build corpus entry ``name``: ``(module, example_args)``. ``size`` overrides the
    builder's size arguments (``seq_len=2048``, ``n_res=192``); the default is the test size.

    Raises
    ------
    KeyError
        For an unknown name (the message lists the entries).
    ImportError
        When the library that builds it is not installed (the message says what to install).
    """
    if name not in CORPUS:
        raise KeyError(f"no corpus model {name!r}; the corpus has {sorted(CORPUS)}")
    missing = missing_library(name)
    if missing is not None:
        how = (
            "pip install --no-deps openfold3 ml-collections gemmi biotite"
            if missing == "openfold3"
            else f"pip install {missing}"
        )
        raise ImportError(
            f"corpus model {name!r} is built by {missing}, which is not installed: {how}"
        )
    return CORPUS[name].build(**size)
