"""PyTorch -> Relax import (torch.export + TVM's ExportedProgram importer)."""

from .torch_import import UnsupportedOperatorError, from_exported_program, from_torch

__all__ = ["UnsupportedOperatorError", "from_exported_program", "from_torch"]
