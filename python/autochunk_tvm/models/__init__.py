"""Model zoo: the paper's four model families, written here, with size presets.

Every factory has the signature ``factory(preset="tiny", *, seed=0, dtype=torch.float32,
**overrides) -> (torch.nn.Module, args)``: ``"tiny"`` for tests, ``"small"`` for CPU benchmarks,
``"paper"`` for the paper's sizes; ``overrides`` change any config field (e.g. ``seq_len``).
:func:`pair_update` (the Evoformer's triangle updates and pair transition alone) is not one of
the four families; the memory-agreement benchmark and tests use it.
"""

from .evoformer import EvoformerConfig, evoformer, pair_update
from .gpt import GPTConfig, gpt
from .unet import UNetConfig, unet
from .vit import ViTConfig, vit

FACTORIES = {"gpt": gpt, "vit": vit, "evoformer": evoformer, "unet": unet}

__all__ = [
    "FACTORIES",
    "EvoformerConfig",
    "GPTConfig",
    "UNetConfig",
    "ViTConfig",
    "evoformer",
    "gpt",
    "pair_update",
    "unet",
    "vit",
]
