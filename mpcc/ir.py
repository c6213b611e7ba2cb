"""The mpcc IR: a typed SSA graph with one line of text per node.

A value has a shape, an element kind (``real`` fixed-point numbers, ``int``
such as token ids, ``bool`` masks) and a visibility (who may see it in the
clear). Nodes are immutable; passes build new graphs. The text form is the
contract for dumps, golden tests and plan files: ``parse(g.dump()) == g``.

    %embedding = embedding(%p_wte, %input_ids, padding_idx=-1, ...) : real[1,8,32] shared  # transformer.wte
"""
from __future__ import annotations

import base64
import io
import math
import re
import tokenize
import zlib
import ast
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import numpy as np
import torch

__all__ = [
    "KINDS", "VISIBILITIES", "TensorType", "Node", "Graph", "IRError", "ParseError",
    "parse", "join_visibility", "kind_of_dtype", "dtype_of_kind", "MARK",
]

KINDS = ("real", "int", "bool")
VISIBILITIES = ("public", "client", "server", "shared", "?")
MARK = "$"  # stands for "the next operand" inside a list-valued attribute
INLINE_CONST_LIMIT = 8  # constants with more elements go to the blob section
HEADER = "mpcc.graph v1"


class IRError(ValueError):
    """A graph breaks an IR rule (raised by lint and by graph construction)."""


class ParseError(IRError):
    """IR text that cannot be read back; names the line."""


def kind_of_dtype(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_floating_point:
        return "real"
    if dtype.is_complex:
        raise IRError(f"complex tensors are not supported ({dtype})")
    return "int"


def dtype_of_kind(kind: str) -> torch.dtype:
    """The dtype the plaintext interpreter uses for a kind (reals in float64)."""
    return {"real": torch.float64, "int": torch.int64, "bool": torch.bool}[kind]


def join_visibility(visibilities: Iterable[str]) -> str:
    """Who can see a value computed from values of these visibilities."""
    owners = {v for v in visibilities if v != "public"}
    if "?" in owners:
        return "?"
    if not owners:
        return "public"
    if len(owners) == 1:
        return owners.pop()
    return "shared"


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    kind: str
    vis: str = "?"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise IRError(f"unknown element kind {self.kind!r}; expected one of {KINDS}")
        if self.vis not in VISIBILITIES:
            raise IRError(f"unknown visibility {self.vis!r}; expected one of {VISIBILITIES}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    def __str__(self) -> str:
        return f"{self.kind}[{','.join(map(str, self.shape))}] {self.vis}"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Node:
    """One SSA value: ``name = op(*operands, **attrs) : type  # origin``."""
    name: str
    op: str
    operands: tuple[str, ...]
    attrs: dict[str, Any]
    type: TensorType
    origin: str = ""  # module path the node came from, e.g. encoder.layer.0.attention

    def with_(self, **changes) -> "Node":
        return replace(self, **changes)

    def __eq__(self, other):
        if not isinstance(other, Node):
            return NotImplemented
        return (self.name, self.op, self.operands, self.type, self.origin) == (
            other.name, other.op, other.operands, other.type, other.origin
        ) and _attrs_equal(self.attrs, other.attrs)

    __hash__ = object.__hash__


def _attrs_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape
                and bool(torch.equal(a, b) or (a.is_floating_point()
                                                and torch.equal(torch.nan_to_num(a, nan=0.5), torch.nan_to_num(b, nan=0.5))
                                                and torch.equal(a.isnan(), b.isnan()))))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_attrs_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_attrs_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class Graph:
    """An ordered list of nodes (a topological order) and the names it returns."""
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    _index: dict = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        index = {}
        for node in self.nodes:
            if node.name in index:
                raise IRError(f"value %{node.name} is defined twice")
            index[node.name] = node
        object.__setattr__(self, "_index", index)

    def __getitem__(self, name: str) -> Node:
        try:
            return self._index[name]
        except KeyError:
            raise IRError(f"no value named %{name} in the graph") from None

    def __contains__(self, name: str) -> bool:
        return name in self._index

    @property
    def inputs(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.op == "input")

    @property
    def params(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.op == "param")

    def users(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for node in self.nodes:
            for operand in node.operands:
                result[operand].append(node.name)
        return result

    def sole_reader(self, name: str, users: dict[str, list[str]]) -> "Node | None":
        """The one node that reads ``name`` (``users``: from ``users()``), or None when
        several read it, none does, or it is an output: what a fusion may absorb."""
        readers = users.get(name, [])
        return self[readers[0]] if len(readers) == 1 and name not in self.outputs else None

    def static_values(self) -> frozenset[str]:
        """Values that depend only on weights and constants: fixed for a deployment
        (what a server may mask once and send once, and what a party may cache)."""
        static: set[str] = set()
        for node in self.nodes:
            if node.op in ("param", "const") or (node.op != "input" and node.type.vis != "shared"
                                                  and node.operands and all(o in static for o in node.operands)):
                static.add(node.name)
        return frozenset(static)

    def replace_nodes(self, nodes: Iterable[Node], outputs: Iterable[str] | None = None) -> "Graph":
        return Graph(tuple(nodes), tuple(self.outputs if outputs is None else outputs))

    def fused(self, dropped: Iterable[str], replacements: dict[str, tuple[Node, ...]]) -> "Graph":
        """A fusion's rebuild: the ``dropped`` nodes gone, each node named in
        ``replacements`` replaced, where it stood, by its nodes."""
        dropped = set(dropped)
        return self.replace_nodes(new for node in self.nodes if node.name not in dropped
                                  for new in replacements.get(node.name, (node,)))

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts of ops by name and of values by visibility."""
        ops: dict[str, int] = {}
        vis: dict[str, int] = {}
        for node in self.nodes:
            ops[node.op] = ops.get(node.op, 0) + 1
            vis[node.type.vis] = vis.get(node.type.vis, 0) + 1
        return {"ops": dict(sorted(ops.items())), "visibility": dict(sorted(vis.items()))}

    def dump(self) -> str:
        return dump(self)

    def __eq__(self, other):
        if not isinstance(other, Graph):
            return NotImplemented
        return self.outputs == other.outputs and len(self.nodes) == len(other.nodes) and all(
            a == b for a, b in zip(self.nodes, other.nodes))

    __hash__ = object.__hash__


# ----------------------------------------------------------------------------- printing

def _format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_format_value(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, (bool, int, str)) or value is None:
        return repr(value)
    raise IRError(f"attribute value {value!r} of type {type(value).__name__} cannot be printed")


def _tensor_to_blob(value: torch.Tensor) -> str:
    buffer = value.detach().cpu().contiguous().numpy().tobytes()
    return base64.b64encode(zlib.compress(buffer, 6)).decode("ascii")


def _blob_to_tensor(text: str, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    np_dtype = {"real": np.float64, "int": np.int64, "bool": np.bool_}[kind]
    raw = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
    array = np.frombuffer(raw, dtype=np_dtype)
    if array.size != math.prod(shape):
        raise ParseError(f"blob holds {array.size} elements, type says {shape}")
    return torch.from_numpy(array.copy()).reshape(shape)


def dump(graph: Graph) -> str:
    lines = [HEADER]
    blobs = []
    for node in graph.nodes:
        parts = [f"%{o}" for o in node.operands]
        for key, value in node.attrs.items():
            if isinstance(value, torch.Tensor):
                if value.numel() <= INLINE_CONST_LIMIT:
                    value = value.tolist()
                else:
                    blobs.append(f"blob %{node.name} {_tensor_to_blob(value)}")
                    value = "<blob>"
                    key = f"{key}"
            parts.append(f"{key}={_format_value(value)}")
        line = f"%{node.name} = {node.op}({', '.join(parts)}) : {node.type}"
        if node.origin:
            line += f"  # {node.origin}"
        lines.append(line)
    lines.append("return " + ", ".join(f"%{o}" for o in graph.outputs))
    return "\n".join(lines + blobs) + "\n"


# ----------------------------------------------------------------------------- parsing

_LINE = re.compile(r"^%(?P<name>\w+) = (?P<op>[\w.]+)\((?P<args>.*)\) : (?P<kind>\w+)\[(?P<shape>[0-9,]*)\] "
                   r"(?P<vis>\w+|\?)(?:  # (?P<origin>.*))?$")
_VALUE_PREFIX = "_mpcc_value_"


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
        return float(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ParseError("sign applied to a non-number")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    raise ParseError(f"not a literal: {ast.dump(node)}")


def _parse_call(text: str) -> tuple[list[str], dict[str, Any]]:
    """Parse ``%a, %b, k=v`` by turning ``%name`` into a Python name first."""
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    out, i = [], 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type == tokenize.OP and tok.string == "%" and i + 1 < len(tokens) and tokens[i + 1].type == tokenize.NAME:
            out.append((tokenize.NAME, _VALUE_PREFIX + tokens[i + 1].string))
            i += 2
            continue
        out.append((tok.type, tok.string))
        i += 1
    source = tokenize.untokenize(out).strip()
    tree = ast.parse(f"f({source})", mode="eval").body
    operands = []
    for arg in tree.args:
        if not (isinstance(arg, ast.Name) and arg.id.startswith(_VALUE_PREFIX)):
            raise ParseError("positional arguments must be %values")
        operands.append(arg.id[len(_VALUE_PREFIX):])
    attrs = {kw.arg: _literal(kw.value) for kw in tree.keywords}
    return operands, attrs


def parse(text: str) -> Graph:
    """Read the text form back into a Graph (the inverse of ``Graph.dump``)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise ParseError(f"line 1: expected header {HEADER!r}, got {lines[0][:60] if lines else ''!r}")
    nodes: list[Node] = []
    outputs: tuple[str, ...] | None = None
    blobs: dict[str, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            if line.startswith("blob %"):
                _, name, data = line.split(" ", 2)
                blobs[name[1:]] = data
                continue
            if line.startswith("return"):
                rest = line[len("return"):].strip()
                outputs = tuple(part.strip()[1:] for part in rest.split(",")) if rest else ()
                continue
            match = _LINE.match(line)
            if not match:
                raise ParseError("does not look like '%name = op(...) : kind[shape] visibility'")
            operands, attrs = _parse_call(match["args"])
            shape = tuple(int(s) for s in match["shape"].split(",")) if match["shape"] else ()
            node_type = TensorType(shape, match["kind"], match["vis"])
            nodes.append(Node(match["name"], match["op"], tuple(operands), attrs, node_type, match["origin"] or ""))
        except (ParseError, IRError, SyntaxError, ValueError, tokenize.TokenError) as error:
            raise ParseError(f"line {number}: {error}: {line[:120]}") from None
    if outputs is None:
        raise ParseError("missing 'return' line (file truncated?)")
    resolved = []
    for node in nodes:
        attrs = dict(node.attrs)
        for key, value in node.attrs.items():
            if value == "<blob>":
                if node.name not in blobs:
                    raise ParseError(f"%{node.name}: its blob is missing (file truncated?)")
                try:
                    attrs[key] = _blob_to_tensor(blobs[node.name], node.type.kind, node.type.shape)
                except (ValueError, zlib.error) as error:
                    raise ParseError(f"%{node.name}: corrupt blob ({error})") from None
            elif key == "value" and node.op == "const":
                attrs[key] = torch.tensor(value, dtype=dtype_of_kind(node.type.kind)).reshape(node.type.shape)
        resolved.append(node.with_(attrs=attrs))
    return Graph(tuple(resolved), outputs)
