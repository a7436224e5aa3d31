"""PyTorch -> Relax import (torch.export + TVM's ExportedProgram importer)."""

from .torch_import import (
    UnsupportedOperatorError,
    decompositions_for,
    from_exported_program,
    from_torch,
)
from .unsupported import Decomposition, OpKind, UnsupportedOp

__all__ = [
    "Decomposition",
    "OpKind",
    "UnsupportedOp",
    "UnsupportedOperatorError",
    "decompositions_for",
    "from_exported_program",
    "from_torch",
]
