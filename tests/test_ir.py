"""The IR text form reads back exactly; the verifier rejects broken graphs."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

from mpcc.ir import Graph, Node, ParseError, TensorType, parse, IRError
from mpcc.ops import MARK, REGISTRY
from mpcc.verify import LintError, lint

NON_SOURCE = sorted(name for name, op in REGISTRY.items() if not op.source and name != "const" and op.params)
names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
literals = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=6)
    | st.floats(allow_nan=True, allow_infinity=True),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner), max_leaves=6)
shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)
origins = st.sampled_from(["", "encoder.layer.0.attention", "h.1.mlp.c_fc", "x"])
visibilities = st.sampled_from(["public", "client", "server", "shared", "?"])


def tensors(kind, shape):
    if kind == "real":
        elements = st.floats(allow_nan=False, width=64)
    elif kind == "int":
        elements = st.integers(-2**63, 2**63 - 1)
    else:
        elements = st.booleans()
    dtype = {"real": torch.float64, "int": torch.int64, "bool": torch.bool}[kind]
    count = 1
    for s in shape:
        count *= s
    return st.lists(elements, min_size=count, max_size=count).map(
        lambda values: torch.tensor(values, dtype=dtype).reshape(shape))


@st.composite
def graphs(draw):
    nodes: list[Node] = []
    taken: set[str] = set()

    def fresh():
        name = draw(names.filter(lambda n: n not in taken))
        taken.add(name)
        return name

    for _ in range(draw(st.integers(1, 3))):
        owner = draw(st.sampled_from(["client", "server", "public"]))
        nodes.append(Node(fresh(), "input", (), {"owner": owner},
                          TensorType(draw(shapes), draw(st.sampled_from(["real", "int", "bool"])), owner)))
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["real", "int", "bool"]))
        shape = draw(st.lists(st.integers(1, 5), max_size=2).map(tuple))
        nodes.append(Node(fresh(), "const", (), {"value": draw(tensors(kind, shape))}, TensorType(shape, kind, "public")))
    nodes.append(Node(fresh(), "param", (), {"key": draw(st.text(min_size=1, max_size=12))},
                      TensorType(draw(shapes), "real", "server"), draw(origins)))
    for _ in range(draw(st.integers(0, 6))):
        op = REGISTRY[draw(st.sampled_from(NON_SOURCE))]
        operands, attrs = [], {}
        for param in op.params:
            choice = draw(st.sampled_from(["operand", "attr", "list"]))
            if choice == "operand":
                operands.append(draw(st.sampled_from([n.name for n in nodes])))
            elif choice == "list":
                items = draw(st.lists(st.sampled_from([MARK, None, 3]), max_size=3))
                operands.extend(draw(st.sampled_from([n.name for n in nodes])) for i in items if i == MARK)
                attrs[param] = items
            else:
                attrs[param] = draw(literals.filter(lambda v: v != MARK and v != "<blob>"))
        nodes.append(Node(fresh(), op.name, tuple(operands), attrs,
                          TensorType(draw(shapes), draw(st.sampled_from(["real", "int", "bool"])), draw(visibilities)),
                          draw(origins)))
    outputs = draw(st.lists(st.sampled_from([n.name for n in nodes]), min_size=1, max_size=3))
    return Graph(tuple(nodes), tuple(outputs))


@given(graphs())
def test_dump_then_parse_is_identity(graph):
    text = graph.dump()
    assert parse(text) == graph
    assert parse(text).dump() == text


def _small_graph():
    x = Node("x", "input", (), {"owner": "client"}, TensorType((2, 3), "real", "client"))
    w = Node("w", "param", (), {"key": "layer.weight"}, TensorType((4, 3), "real", "server"), "layer")
    c = Node("c", "const", (), {"value": torch.arange(12, dtype=torch.float64).reshape(3, 4)},
             TensorType((3, 4), "real", "public"))
    y = Node("y", "linear", ("x", "w"), {"bias": None}, TensorType((2, 4), "real", "shared"), "layer")
    return Graph((x, w, c, y), ("y",))


def test_dump_is_readable():
    text = _small_graph().dump()
    assert "%y = linear(%x, %w, bias=None) : real[2,4] shared  # layer" in text
    assert text.startswith("mpcc.graph v1\n")


@pytest.mark.parametrize("mutate, message", [
    (lambda t: "garbage\n" + t, "header"),
    (lambda t: t.replace("return %y\n", ""), "return"),
    (lambda t: t.split("blob %c ")[0] + "blob %c AAAA\n", "blob"),
    (lambda t: t.replace(": real[2,4] shared", ": real[2,4] everyone"), "line"),
    (lambda t: t.replace("bias=None", "bias=os.system('x')"), "line"),
])
def test_parse_errors_name_the_problem(mutate, message):
    with pytest.raises(ParseError, match=message):
        parse(mutate(_small_graph().dump()))


def test_lint_accepts_good_graph_and_rejects_bad_ones():
    graph = _small_graph()
    lint(graph, shapes=True)
    bad_operand = graph.replace_nodes(graph.nodes[:3] + (graph.nodes[3].with_(operands=("x", "nope")),))
    with pytest.raises(LintError, match="not defined"):
        lint(bad_operand)
    bad_shape = graph.replace_nodes(graph.nodes[:3] + (graph.nodes[3].with_(type=TensorType((2, 5), "real", "shared")),))
    with pytest.raises(LintError, match="shape"):
        lint(bad_shape, shapes=True)
    bad_vis = graph.replace_nodes(graph.nodes[:3] + (graph.nodes[3].with_(type=TensorType((2, 4), "real", "client")),))
    with pytest.raises(LintError, match="visibility"):
        lint(bad_vis)
    bad_attr = graph.replace_nodes(graph.nodes[:3] + (graph.nodes[3].with_(attrs={"bias": None, "colour": 1}),))
    with pytest.raises(LintError, match="colour"):
        lint(bad_attr)
    with pytest.raises(LintError, match="output"):
        lint(graph.replace_nodes(graph.nodes, outputs=("missing",)))
    with pytest.raises(IRError, match="twice"):
        Graph(graph.nodes + (graph.nodes[0],), ())
