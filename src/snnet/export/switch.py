"""Several single-stitch ONNX graphs joined into one that runs any of them, chosen by an index.

:func:`switch_graph` takes the graphs :func:`~snnet.export.graphs.onnx_model` exports (input
``x``: normalised images, output ``logits``, or ``depth`` for a depth network) and builds one
model::

    pixels (uint8, N×C×H×W) ─ Cast, /255, −mean, /std ─ x ─────────────────────────────┐
    stitch (int64 scalar) ─ Gather(i < m?) ─ If ─ ... ─ Gather(i < m'?) ─ If ─ stitch i's graph
                                                                       └─ logits (or depth)

The stitches' graphs sit at the leaves of a balanced tree of ``If`` nodes, so a call takes
``ceil(log2 n)`` lookups and ``If`` nodes, then one stitch's nodes, unchanged. A stitch index
outside ``-n..n-1`` fails in the first lookup; a negative one counts from the end, as in Python.

Each weight is stored once, found by content (type, shape, bytes). A weight only one stitch uses
is an initializer of that stitch's branch. A weight several stitches share is an initializer of
the main graph, and each branch takes it through ``Mul(w, 1)``, which ONNX Runtime folds into a
constant of the branch when it loads the file (at every optimisation level). The fold is what
keeps a call as fast as the stitch's own file: ONNX Runtime hands every value a branch reads from
outside to the branch at each call, a cost per value and per ``If`` level (``benchmarks/
bench_front.py`` measures it), while a branch's own constants cost nothing. The price is memory:
a loaded session holds each stitch's weights in its branch, the sum over the stitches rather
than the distinct weights; the file holds each once.

No torch here: the module reads and writes ``onnx`` protos only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from snnet.artifact import DEPTH, LOGITS, PIXELS, STITCH

#: What the single-stitch graphs take and give (see graphs.write_onnx).
_X, _OUTPUTS = "x", (LOGITS, DEPTH)
# Element types Mul accepts, so a shared weight of one of them can be folded into a branch.
_MUL_TYPES = {
    TensorProto.FLOAT,
    TensorProto.DOUBLE,
    TensorProto.FLOAT16,
    TensorProto.BFLOAT16,
    TensorProto.INT8,
    TensorProto.INT16,
    TensorProto.INT32,
    TensorProto.INT64,
    TensorProto.UINT8,
    TensorProto.UINT16,
    TensorProto.UINT32,
    TensorProto.UINT64,
}
#: ONNX files are protobuf messages, which stop at 2 GiB.
MAX_BYTES = 2**31 - 1


@dataclass
class _Pool:
    """The distinct tensors of all the stitches' graphs, by content, and which stitches use each."""

    tensors: dict[tuple, TensorProto] = field(default_factory=dict)
    users: dict[tuple, set[int]] = field(default_factory=dict)

    def add(self, t: TensorProto, stitch: int) -> tuple:
        arr = numpy_helper.to_array(t)
        key = (t.data_type, tuple(t.dims), hashlib.sha256(arr.tobytes()).hexdigest())
        self.tensors.setdefault(key, t)
        self.users.setdefault(key, set()).add(stitch)
        return key

    def shared(self, key: tuple) -> bool:
        return len(self.users[key]) > 1


def switch_graph(
    models: Sequence[onnx.ModelProto],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """One model running any of ``models`` (single-stitch graphs: input ``x``, output ``logits``
    or ``depth``, the same for all) on uint8 ``pixels``, normalised inside as
    ``(pixels / 255 - mean) / std``, the stitch chosen by the int64 scalar input ``stitch`` (its
    position in ``models``).

    Example:
        >>> front = switch_graph([onnx_model(m) for m in stitched], mean=[0.5], std=[0.5])
    """
    if not models:
        raise ValueError("a switch needs at least one graph")
    first = models[0]
    for m in models:
        _check_single(m, first)
    pool = _Pool()
    keys = [{t.name: pool.add(t, i) for t in m.graph.initializer} for i, m in enumerate(models)]
    shared = {key: f"w{n}" for n, key in enumerate(k for k in pool.tensors if pool.shared(k))}
    branches = [_branch(m.graph, i, keys[i], pool, shared) for i, m in enumerate(models)]
    out_name, out_type = first.graph.output[0].name, first.graph.output[0].type
    nodes, inits = _preprocess(mean, std)
    inits += [numpy_helper.from_array(_array(pool.tensors[k]), name) for k, name in shared.items()]
    inits += _ones(shared)
    tree = _tree(branches, 0, len(branches), len(branches), out_type)
    nodes += _rename_output(tree, out_name)
    inits += tree.initializer  # the top of the tree is the main graph
    channels, height, width = (
        d.dim_value for d in first.graph.input[0].type.tensor_type.shape.dim[1:]
    )
    graph = helper.make_graph(
        nodes,
        "snnet_front",
        [
            helper.make_tensor_value_info(
                PIXELS, TensorProto.UINT8, ["batch", channels, height, width]
            ),
            helper.make_tensor_value_info(STITCH, TensorProto.INT64, []),
        ],
        [_value_info(out_name, out_type)],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=list(first.opset_import),
        ir_version=first.ir_version,
        producer_name="snnet",
    )
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    if model.ByteSize() > MAX_BYTES:
        raise ValueError(
            f"the front's graph is {model.ByteSize() / 2**30:.1f} GiB, over ONNX's 2 GiB limit "
            "for one file: export fewer stitches"
        )
    return model


def _check_single(m: onnx.ModelProto, first: onnx.ModelProto) -> None:
    g = m.graph
    outputs = [o.name for o in g.output]
    if [i.name for i in g.input] != [_X] or len(outputs) != 1 or outputs[0] not in _OUTPUTS:
        raise ValueError(
            "each graph must take one input 'x' and give one output 'logits' or 'depth'"
        )
    if outputs[0] != first.graph.output[0].name:
        raise ValueError("the graphs give different outputs (logits and depth)")
    if m.functions:
        raise ValueError("graphs with local functions cannot be joined: inline them first")
    if sorted((o.domain, o.version) for o in m.opset_import) != sorted(
        (o.domain, o.version) for o in first.opset_import
    ):
        raise ValueError("the graphs were exported with different opsets")
    if g.input[0].type != first.graph.input[0].type:
        raise ValueError("the graphs take differently shaped images")
    if g.output[0].type != first.graph.output[0].type:
        raise ValueError(
            "the graphs give differently shaped outputs (another number of classes or map size)"
        )


def _array(t: TensorProto) -> np.ndarray:
    return numpy_helper.to_array(t)


def _branch(
    g: onnx.GraphProto,
    index: int,
    keys: dict[str, tuple],
    pool: _Pool,
    shared: dict[tuple, str],
) -> onnx.GraphProto:
    """Stitch ``index``'s graph as an ``If`` branch: its values renamed ``{k}_{index}``, its
    input read from the outer ``x``, its own weights local and the shared ones taken through a
    ``Mul`` by one that ONNX Runtime folds (see the module docstring)."""
    names: dict[str, str] = {_X: _X}

    def rename(name: str) -> str:
        if name == "":
            return name  # an omitted optional input
        if name not in names:  # short names: a node's names are most of its bytes
            names[name] = f"{_base36(len(names))}_{index}"
        return names[name]

    local, takes, seen = [], [], {}
    for t in g.initializer:
        key = keys[t.name]
        if key in seen:  # the same tensor under another name (tied weights): stored once
            names[t.name] = seen[key]
            continue
        new = seen[key] = rename(t.name)
        if key in shared and t.data_type in _MUL_TYPES:
            takes.append(helper.make_node("Mul", [shared[key], _one(t.data_type)], [new]))
        else:  # its own weight, or a shared one Mul cannot take (bool, string): a local copy
            local.append(numpy_helper.from_array(_array(pool.tensors[key]), new))
    nodes = [*takes, *(_strip(n, rename) for n in g.node)]
    out = g.output[0]
    return helper.make_graph(
        nodes, f"stitch{index}", [], [_value_info(rename(out.name), out.type)], initializer=local
    )


def _base36(n: int) -> str:
    digits = ""
    while True:
        n, d = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[d] + digits
        if n == 0:
            return digits


def _strip(node: onnx.NodeProto, rename: Any) -> onnx.NodeProto:
    """``node`` with its values renamed and without the exporter's debugging records (names,
    stack traces, module paths: bytes the file need not carry)."""
    for a in node.attribute:
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise ValueError(f"a {node.op_type} node holds a subgraph: cannot join such graphs")
    new = helper.make_node(
        node.op_type,
        [rename(n) for n in node.input],
        [rename(n) for n in node.output],
        domain=node.domain or None,
    )
    new.attribute.extend(node.attribute)
    return new


def _one(data_type: int) -> str:
    return f"one_{data_type}"


def _ones(shared: dict[tuple, str]) -> list[TensorProto]:
    types = sorted({k[0] for k in shared if k[0] in _MUL_TYPES})
    dtypes = {t: helper.tensor_dtype_to_np_dtype(t) for t in types}
    return [numpy_helper.from_array(np.array(1, dtype=dtypes[t]), _one(t)) for t in types]


def _preprocess(mean: Sequence[float], std: Sequence[float]) -> tuple[list[Any], list[Any]]:
    """``x = (float(pixels) / 255 - mean) / std`` in float32, the very operations of
    ``DataConfig.normalize`` (so ``x`` equals its, bit for bit). Faster in ONNX Runtime than a
    ``Gather`` from a table of the 256 values per channel, measured."""
    c = len(mean)
    inits = [
        numpy_helper.from_array(np.array(255, np.float32), "k255"),
        numpy_helper.from_array(np.array(mean, np.float32).reshape(c, 1, 1), "mean"),
        numpy_helper.from_array(np.array(std, np.float32).reshape(c, 1, 1), "std"),
    ]
    nodes = [
        helper.make_node("Cast", [PIXELS], ["pixels_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["pixels_f", "k255"], ["pixels_01"]),
        helper.make_node("Sub", ["pixels_01", "mean"], ["pixels_c"]),
        helper.make_node("Div", ["pixels_c", "std"], [_X]),
    ]
    return nodes, inits


def _tree(
    branches: list[onnx.GraphProto], lo: int, hi: int, n: int, out_type: Any
) -> onnx.GraphProto:
    """The graph choosing among ``branches[lo:hi]``: ``If`` over the two halves, its condition
    looked up by the stitch input in a table of ``n`` booleans held by this graph (a lookup
    fails for an index outside ``-n..n-1``; the graph's own constants cost nothing per call). A
    single branch is itself, but at the top it is put behind such an ``If`` too, so its index
    is checked all the same."""
    if hi - lo == 1 and n > 1:
        return branches[lo]
    if n == 1:
        mid, then_branch, else_branch = 1, branches[0], _empty(out_type)
    else:
        mid = (lo + hi) // 2
        then_branch = _tree(branches, lo, mid, n, out_type)
        else_branch = _tree(branches, mid, hi, n, out_type)
    goes_left = np.arange(n) < mid
    table, cond, out = f"left{lo}_{hi}", f"cond{lo}_{hi}", f"y{lo}_{hi}"
    nodes = [
        helper.make_node("Gather", [table, STITCH], [cond], axis=0),
        helper.make_node("If", [cond], [out], then_branch=then_branch, else_branch=else_branch),
    ]
    inits = [numpy_helper.from_array(goes_left, table)]
    return helper.make_graph(
        nodes, f"stitches{lo}_{hi}", [], [_value_info(out, out_type)], initializer=inits
    )


def _empty(out_type: Any) -> onnx.GraphProto:
    """A branch never taken (the other side of a one-stitch front's check): no rows."""
    dims = out_type.tensor_type.shape.dim
    dtype = helper.tensor_dtype_to_np_dtype(out_type.tensor_type.elem_type)
    shape = (0, *(d.dim_value for d in dims[1:]))
    value = numpy_helper.from_array(np.zeros(shape, dtype), "none")
    node = helper.make_node("Constant", [], ["none"], value=value)
    return helper.make_graph([node], "none", [], [_value_info("none", out_type)])


def _rename_output(g: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    """``g``'s nodes with its output renamed ``name`` (the top of the tree joins the main graph)."""
    old = g.output[0].name
    nodes = list(g.node)
    for n in nodes:
        n.output[:] = [name if o == old else o for o in n.output]
    return nodes


def _value_info(name: str, type_proto: Any) -> onnx.ValueInfoProto:
    v = onnx.ValueInfoProto(name=name)
    v.type.CopyFrom(type_proto)
    return v


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the tensors ``model`` stores, in the main graph and in every branch."""
    return sum(_array(t).nbytes for t in _initializers(model.graph))


def _initializers(g: onnx.GraphProto) -> list[TensorProto]:
    out = list(g.initializer)
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += _initializers(a.g)
    return out
