"""Shared helpers for the model zoo: presets, overrides, deterministic weights and inputs."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch

C = TypeVar("C")


def resolve_config(
    cls: type[C], presets: dict[str, C], preset: str, overrides: dict[str, Any]
) -> C:
    """Return ``presets[preset]`` with ``overrides`` applied, with errors a user can act on.

    Parameters
    ----------
    cls
        The config dataclass; used to validate override names.
    presets
        Named configurations of the model.
    preset
        The name asked for.
    overrides
        Field values replacing the preset's.

    Raises
    ------
    ValueError
        If the preset or an override name is unknown.
    """
    if preset not in presets:
        raise ValueError(
            f"unknown {cls.__name__} preset {preset!r}; choose one of {sorted(presets)} "
            "or pass field overrides on top of one of them"
        )
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"{cls.__name__} has no field(s) {unknown}; valid fields are {sorted(fields)}"
        )
    return dataclasses.replace(presets[preset], **overrides)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator so that weights and inputs do not depend on global RNG state."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def init_weights_(module: torch.nn.Module, seed: int) -> None:
    """Re-initialise every parameter deterministically from ``seed``.

    NOTE [zoo weights]: values are small (std 0.02, like GPT-2's init) so that deep stacks stay
    numerically tame in fp16 and comparisons against PyTorch use plain dtype tolerances. Norm
    weights get 1 + noise and biases small noise so that no parameter is trivially 0 or 1,
    which would hide a wrong broadcast in the compiled model.
    """
    gen = seeded_generator(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32) * 0.02
            if name.endswith("bias"):
                param.copy_(noise)
            elif param.ndim == 1:  # norm scales
                param.copy_(1.0 + noise)
            else:
                param.copy_(noise)


def finalize(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], dtype: torch.dtype
) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Cast module and floating inputs to ``dtype`` and put the module in eval mode."""
    module = module.to(dtype).eval()
    args = tuple(a.to(dtype) if a.is_floating_point() else a for a in args)
    return module, args
