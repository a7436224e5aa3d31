"""Region classes (search/classes.py): which regions are the same computation in different
layers, on hand-written Relax. A class is chunked in one selection step at one chunk length."""

import itertools

from tvm.script import relax as R

from autochunk_tvm.search import ChunkAxis, flat_bindings, trace_region
from autochunk_tvm.search.classes import ClassFinder


@R.function
def stack(x: R.Tensor((128, 16), "float32"), z: R.Tensor((64, 16), "float32")):
    with R.dataflow():
        # block 1
        k1 = R.multiply(x, R.const(2.0, "float32"))
        kt1 = R.permute_dims(k1, [1, 0])
        s1 = R.matmul(x, kt1)
        p1 = R.nn.softmax(s1, axis=-1)
        o1 = R.matmul(p1, k1)
        y1 = R.add(o1, x)
        # block 2: block 1 again, on its output
        k2 = R.multiply(y1, R.const(2.0, "float32"))
        kt2 = R.permute_dims(k2, [1, 0])
        s2 = R.matmul(y1, kt2)
        p2 = R.nn.softmax(s2, axis=-1)
        o2 = R.matmul(p2, k2)
        y2 = R.add(o2, y1)
        # block 3: the same ops, but its probabilities are also read after the block
        k3 = R.multiply(y2, R.const(2.0, "float32"))
        kt3 = R.permute_dims(k3, [1, 0])
        s3 = R.matmul(y2, kt3)
        p3 = R.nn.softmax(s3, axis=-1)
        o3 = R.matmul(p3, k3)
        y3 = R.add(o3, y2)
        m3 = R.max(p3, axis=[1])
        # block 4: the same ops at another shape
        k4 = R.multiply(z, R.const(2.0, "float32"))
        kt4 = R.permute_dims(k4, [1, 0])
        s4 = R.matmul(z, kt4)
        p4 = R.nn.softmax(s4, axis=-1)
        o4 = R.matmul(p4, k4)
        y4 = R.add(o4, z)
        # block 5: block 1 again, softmax over the other axis
        k5 = R.multiply(y3, R.const(2.0, "float32"))
        kt5 = R.permute_dims(k5, [1, 0])
        s5 = R.matmul(y3, kt5)
        p5 = R.nn.softmax(s5, axis=0)
        o5 = R.matmul(p5, k5)
        y5 = R.add(o5, y3)
        out = (y5, m3, y4)
        R.output(out)
    return out


def _region(first, last, **axes):
    names = [b.var.name for b in flat_bindings(stack)]
    return trace_region(stack, names.index(first), names.index(last), axes)


def _outputs(cls):
    return [m.outputs[0][0] for m in cls.members]


def test_alike_blocks_form_one_class_with_the_same_flow():
    seed = _region("s1", "y1", y1=0)
    cls = ClassFinder(stack).region_class(seed)
    # block 2 is block 1 again; 3 has another output, 4 another shape, 5 another softmax axis
    assert _outputs(cls) == ["y1", "y2"]
    twin = cls.members[1]
    assert [n for n, _ in twin.bindings] == ["s2", "p2", "o2", "y2"]
    assert [a for _, a in twin.bindings] == [a for _, a in seed.bindings]
    assert twin.extent == seed.extent == 128
    assert twin.input_axes == {"y1": ChunkAxis(0), "kt2": ChunkAxis(None), "k2": ChunkAxis(None)}


def test_a_class_is_found_from_any_of_its_members():
    finder = ClassFinder(stack)
    assert _outputs(finder.region_class(_region("s2", "y2", y2=0))) == ["y1", "y2"]


def test_another_chunk_axis_is_another_class():
    # from the attention's output on: the probabilities are an input, so block 3 (which
    # reads them after) and block 5 (another softmax axis) are twins here
    finder = ClassFinder(stack)
    rows = finder.region_class(_region("o1", "y1", y1=0))
    cols = finder.region_class(_region("o1", "y1", y1=1))
    assert _outputs(rows) == _outputs(cols) == ["y1", "y2", "y3", "y5"]
    assert all(m.output_axes[m.outputs[0][0]] == ChunkAxis(0) for m in rows.members)
    assert all(m.output_axes[m.outputs[0][0]] == ChunkAxis(1) for m in cols.members)
    assert all(
        m.input_axes[m.bindings[0][0].replace("o", "k")] == ChunkAxis(1) for m in cols.members
    )


def test_a_region_without_twins_is_a_class_of_one():
    seed = _region("s4", "y4", y4=0)
    cls = ClassFinder(stack).region_class(seed)
    assert cls.members == (seed,)


def test_a_region_across_two_blocks_pairs_with_the_next_two():
    # the end of block 1 and the start of block 2 (two outputs: y1 and k2)
    cls = ClassFinder(stack).region_class(_region("o1", "k2", y1=0, k2=0))
    assert [sorted(n for n, _ in m.outputs) for m in cls.members] == [["k2", "y1"], ["k3", "y2"]]
    spans = [(m.start, m.end) for m in cls.members]
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))
