"""from_torch: every accepted input kind, the converters, and errors a user can act on."""

import re

import numpy as np
import pytest
import torch
import tvm
from conftest import run_on_vm

import autochunk_tvm as ac
from autochunk_tvm.frontend import Decomposition, OpKind


class PositionIds(torch.nn.Module):
    """Position ids from a padding mask, as HF models compute them: a cumsum over bool."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids != 1).cumsum(-1) * (ids != 1)


def test_cumsum_over_bool_is_converted_with_torch_dtype():
    ids = torch.tensor([[1, 1, 5, 7, 9, 1], [3, 1, 4, 1, 5, 9]])
    mod = ac.from_torch(PositionIds(), (ids,))
    out = run_on_vm(mod, (ids,))[0]
    expected = PositionIds()(ids).numpy()
    assert out.dtype == expected.dtype == np.int64
    np.testing.assert_array_equal(out, expected)


def test_module_exported_program_and_pt2_file_give_the_same_module(tmp_path):
    model, args = ac.models.gpt("tiny")
    from_module = ac.from_torch(model, args)
    ep = torch.export.export(model, args)
    from_ep = ac.from_torch(ep)
    path = tmp_path / "gpt.pt2"
    torch.export.save(ep, str(path))
    from_file = ac.from_torch(str(path))
    from_file_via_ep_api = ac.from_exported_program(torch.export.load(str(path)))
    for mod in (from_ep, from_file, from_file_via_ep_api):
        tvm.ir.assert_structural_equal(mod, from_module, map_free_vars=True)
    assert ac.from_torch(from_module) is from_module  # an IRModule passes through


def test_keep_params_as_input_marks_weights():
    model, args = ac.models.gpt("tiny")
    mod = ac.from_torch(model, args, keep_params_as_input=True)
    assert int(mod["main"].attrs["num_input"]) == 1
    profile = ac.estimate_activation_memory(mod)
    n_params = sum(p.numel() for p in model.parameters())
    assert profile.weight_bytes >= n_params * 4
    assert profile.input_bytes == args[0].numel() * 8


def test_dynamic_shapes_become_symbolic_with_bounds():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU()).eval()
    x = torch.randn(32, 8)
    seq = torch.export.Dim("seq", min=2, max=4096)
    mod = ac.from_torch(model, (x,), dynamic_shapes={"input": {0: seq}})
    profile = ac.estimate_activation_memory(mod)
    ((name, bound),) = profile.bounds.items()  # torch.export names the symbol (s0, s31, ...)
    assert bound == 4096
    assert profile.input_bytes == 4096 * 8 * 4
    assert ac.estimate_activation_memory(mod, bounds={name: 32}).input_bytes == 32 * 8 * 4


def test_fused_attention_stays_one_op_without_decomposition():
    model, args = ac.models.gpt("tiny", fused_attention=True)
    mod = ac.from_torch(model, args, run_ep_decomposition=False)
    ops = {b.op for b in ac.estimate_activation_memory(mod).bindings}
    assert "relax.nn.attention" in ops


def _prose(error: Exception) -> str:
    """The message with its line wrapping undone."""
    return " ".join(str(error).split())


def test_unsupported_op_is_named_with_what_to_do():
    class Spectrum(torch.nn.Module):
        def forward(self, x):
            return torch.fft.rfft(x).abs()

    with pytest.raises(ac.UnsupportedOperatorError, match="custom_convert_map") as info:
        ac.from_torch(Spectrum(), (torch.randn(4, 16),))
    message = str(info.value)
    assert info.value.ops == ["aten._fft_r2c.default"]
    assert "aten._fft_r2c.default, called as torch.fft.rfft" in message
    # Where: this file, the line, the module, and the code as written.
    assert (
        "test_frontend.py:" in message and "in forward, the top-level module (Spectrum)" in message
    )
    assert message.count("return torch.fft.rfft(x).abs()") == 1
    assert "torch has no decomposition for it" in message and "--decompose" not in message
    assert 'CONVERTERS = {"_fft_r2c.default": fn}' in message
    assert "pass --converters FILE to `autochunk-tvm plan`" in _prose(info.value)
    assert "run_ep_decomposition" not in message  # the default already; no advice to set it
    (op,) = info.value.missing
    assert op.decomposition is Decomposition.NONE and op.kind is OpKind.OP


class Pooled(torch.nn.Module):
    """An op (adaptive max pooling) that the importer lacks and torch decomposes into ops it has."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.AdaptiveMaxPool2d(2))

    def forward(self, x):
        return self.head(x) * 2


def test_an_op_torch_decomposes_is_named_with_decompose_which_then_imports():
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ac.UnsupportedOperatorError) as info:
        ac.from_torch(Pooled(), (x,))
    message = str(info.value)
    (op,) = info.value.missing
    assert op.name == "aten.adaptive_max_pool2d.default" and op.call == "F.adaptive_max_pool2d"
    assert op.decomposition is Decomposition.COMPLETE
    assert "module 'head.1' (AdaptiveMaxPool2d): return self.head(x) * 2" in message
    assert "add --decompose aten.adaptive_max_pool2d.default" in _prose(info.value)
    assert 'from_torch(..., decompose=["aten.adaptive_max_pool2d.default"])' in message
    assert "CONVERTERS =" not in message  # the decomposition is the remedy, not a converter

    model = Pooled().eval()
    mod = ac.from_torch(model, (x,), decompose=["aten.adaptive_max_pool2d.default"])
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_on_vm(mod, (x,))[0], expected, rtol=1e-5, atol=1e-5)


def test_a_decomposition_that_leaves_prims_is_not_offered_and_a_converter_is():
    from tvm import relax

    class Hypot(torch.nn.Module):
        def forward(self, x):
            return torch.hypot(x, x + 1)

    x = torch.randn(4, 8)
    with pytest.raises(ac.UnsupportedOperatorError) as info:
        ac.from_torch(Hypot(), (x,))
    (op,) = info.value.missing
    assert op.decomposition is Decomposition.PARTIAL and op.leaves == ("prims.hypot.default",)
    message = _prose(info.value)
    assert "leaves prims.hypot.default" in message and "does not help" in message
    assert 'CONVERTERS = {"hypot.default": fn}' in message

    def hypot(node, importer):
        emit = importer.block_builder.emit
        a, b = (importer.env[arg] for arg in node.args)
        return emit(relax.op.sqrt(emit(relax.op.add(emit(a * a), emit(b * b)))))

    # The key may carry the namespace, as the message names the op.
    mod = ac.from_torch(Hypot(), (x,), custom_convert_map={"aten.hypot.default": hypot})
    expected = Hypot()(x).numpy()
    np.testing.assert_allclose(run_on_vm(mod, (x,))[0], expected, rtol=1e-5, atol=1e-5)


@torch.library.custom_op("autochunk_test::scale_", mutates_args=("x",))
def _scale_(x: torch.Tensor) -> None:
    x.mul_(2)


@_scale_.register_fake
def _(x):
    return None


def test_torch_export_wrappers_are_reported_as_the_op_they_wrap():
    class Effects(torch.nn.Module):
        def forward(self, x):
            y = x + 1
            _scale_(y)  # written in place: torch.export wraps it in auto_functionalized
            torch.ops.aten._print("y scaled")  # a side effect: wrapped in with_effects
            return y

    with pytest.raises(ac.UnsupportedOperatorError) as info:
        ac.from_torch(Effects(), (torch.randn(4),))
    assert info.value.ops == ["aten._print.default", "autochunk_test.scale_.default"]
    by_name = {op.name: op for op in info.value.missing}
    scale, show = by_name["autochunk_test.scale_.default"], by_name["aten._print.default"]
    assert scale.kind is show.kind is OpKind.WRAPPED
    assert scale.wrapper.startswith("auto_functionalized") and scale.mutated == ("x",)
    assert show.wrapper == "with_effects"
    message = str(info.value)
    headlines = [line for line in message.splitlines() if line and not line.startswith(" ")]
    assert not any(h.startswith(("with_effects", "auto_functionalized")) for h in headlines)
    assert "It writes into x" in message and "_scale_(y)" in message
    assert "remove the call from forward()" in _prose(info.value)
    assert 'CONVERTERS = {"scale_.default": fn}' in message  # for its functional version


def test_run_time_checks_are_left_out_of_the_users_ops_with_a_reason():
    from autochunk_tvm.frontend.unsupported import find_unsupported

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.call_function(torch.ops.aten._functional_assert_async.msg, (x, "x > 0", x))
    graph.output(x)
    error = ac.UnsupportedOperatorError(find_unsupported(graph, known=()))
    assert error.ops == [] and error.missing[0].kind is OpKind.CHECK
    assert "run-time check(s) that torch.export inserted, not ops of your model" in _prose(error)
    assert '"_functional_assert_async.msg": fn' in str(error)


@pytest.mark.parametrize(
    "name, says",
    [
        ("aten.cummax.default", "torch has no decomposition for it"),
        ("aten.no_such_op", "torch has no op aten.no_such_op"),
        ("aten.addmv.nope", "has no overload 'nope'"),
        ("a.b.c.d", "namespace.op.overload"),
    ],
)
def test_decompose_names_a_user_can_correct(name, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        ac.from_torch(torch.nn.ReLU(), (torch.randn(2),), decompose=[name])


def test_custom_converter_routes_around_a_gap():
    from tvm import relax

    class Spectrum(torch.nn.Module):
        def forward(self, x):
            return torch.fft.rfft(x).abs()

    x = torch.randn(4, 16)
    ep = torch.export.export(Spectrum(), (x,)).run_decompositions()
    gap = next(n.target.__name__ for n in ep.graph.nodes if "fft" in str(n.target))

    def zeros_like_spectrum(node, importer):  # a stand-in converter for the test
        shape = [int(d) for d in node.meta["val"].shape]
        return importer.block_builder.emit(relax.op.zeros(shape, "float32"))

    mod = ac.from_torch(Spectrum(), (x,), custom_convert_map={gap: zeros_like_spectrum})
    assert "main" in [gv.name_hint for gv in mod.get_global_vars()]


@pytest.mark.parametrize(
    "bad, err",
    [(42, TypeError), ("does/not/exist.pt2", FileNotFoundError), (np.zeros(3), TypeError)],
)
def test_bad_inputs(bad, err):
    with pytest.raises(err):
        ac.from_torch(bad)


def test_module_without_example_args():
    with pytest.raises(TypeError, match="example_args"):
        ac.from_torch(torch.nn.ReLU())


def test_file_that_is_not_an_exported_program(tmp_path):
    path = tmp_path / "weights.pt2"
    torch.save({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="torch.export.save"):
        ac.from_torch(str(path))


class Norms(torch.nn.Module):
    """Norms without an affine transform (F.group_norm(x, g), F.layer_norm(x, shape)) beside
    affine ones, as diffusion and pair-representation code writes them."""

    def __init__(self):
        super().__init__()
        self.gn = torch.nn.GroupNorm(4, 8)

    def forward(self, x):
        a = torch.nn.functional.group_norm(x, 2)
        b = torch.nn.functional.layer_norm(x, x.shape[-1:])
        return a + b + self.gn(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norms_without_weight_or_bias_import_and_match_torch(dtype):
    # F.group_norm without weight and bias once raised a raw null-pointer InternalError.
    torch.manual_seed(0)
    model, x = Norms().to(dtype), torch.randn(2, 8, 6, 6, dtype=dtype)
    out = run_on_vm(ac.from_torch(model, (x,)), (x,))[0]
    with torch.no_grad():
        expected = model(x).float().numpy()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    np.testing.assert_allclose(np.asarray(out, dtype=np.float32), expected, rtol=tol, atol=tol)
