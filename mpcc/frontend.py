"""Frontend: ``torch.export`` a model, then import its ATen graph into the IR.

Inputs become ``input`` nodes owned by the client (unless declared otherwise),
parameters and persistent buffers become ``param`` nodes (the server's, named
by state_dict key), and non-persistent buffers and lifted constants become
public ``const`` nodes.
"""
from __future__ import annotations

import inspect
import operator
import re
from typing import Any, Mapping

import torch
import torch.fx

from .aten_table import (ASSERT_OPS, ATEN_TO_IR, CAST_OPS, DROPPED_ARGS, IDENTITY_OPS, MULTI_OUTPUT_OPS,
                         supported_aten_ops)
from .ir import Graph, IRError, Node, TensorType, kind_of_dtype
from .ops import MARK, get_op

__all__ = ["trace", "import_exported", "reference_outputs", "UnsupportedOpError", "UnsupportedOpsError", "TraceError",
           "module_path"]

OWNERS = ("client", "server", "public")


class TraceError(RuntimeError):
    """torch.export could not trace the model, or its inputs are not usable."""


class UnsupportedOpError(TraceError):
    """The model uses an ATen op (or an argument of one) that mpcc cannot import."""

    def __init__(self, op: str, module: str, node: str, detail: str = ""):
        self.op, self.module, self.node, self.detail = op, module, node, detail
        where = module or "<top-level module>"
        super().__init__(f"unsupported op {op} in {where} (node {node}){': ' + detail if detail else ''}. "
                         f"mpcc imports {len(supported_aten_ops())} ATen ops; see docs/ir.md")


class UnsupportedOpsError(UnsupportedOpError):
    """Every unsupported op of a model at once: each with its count and first place."""

    def __init__(self, by_op: Mapping[str, list[UnsupportedOpError]]):
        first_op = next(iter(by_op.values()))
        first = first_op[0]
        self.op, self.module, self.node, self.detail = first.op, first.module, first.node, first.detail
        self.by_op = dict(by_op)
        if len(by_op) == 1 and len(first_op) == 1:   # one place: the single op's own message
            TraceError.__init__(self, str(first))
            return
        parts = [f"{op} x{len(errors)} (first in {errors[0].module or '<top-level module>'}, node {errors[0].node}"
                 f"{': ' + errors[0].detail if errors[0].detail else ''})" for op, errors in by_op.items()]
        TraceError.__init__(self, f"{len(by_op)} unsupported op(s): {'; '.join(parts)}. mpcc imports "
                                  f"{len(supported_aten_ops())} ATen ops; see docs/ir.md")


def module_path(fx_node: torch.fx.Node) -> str:
    """``encoder.layer.0.attention`` for the innermost module that made the node."""
    stack = fx_node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']*)'\]", r".\1", path)
    return path.strip(".")


def trace(model: torch.nn.Module, example_inputs, *, owners: Mapping[str, str] | None = None) -> Graph:
    """Trace ``model`` on ``example_inputs`` and import it into the mpcc IR.

    Args:
        model: any ``nn.Module`` (Hugging Face models included).
        example_inputs: a dict of keyword tensors (``model(**inputs)``) or a
            tuple of positional tensors. Non-tensor values are baked in.
        owners: who holds each input (``client``, ``server`` or ``public``);
            inputs not named here are the client's.

    Example:
        >>> import torch, mpcc
        >>> g = mpcc.trace(torch.nn.Linear(4, 2), (torch.zeros(1, 4),))
        >>> [n.op for n in g.nodes]
        ['param', 'param', 'input', 'linear']
    """
    args, kwargs = _unaliased(*_split_inputs(model, example_inputs))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            exported = torch.export.export(model, args, kwargs)
    except Exception as error:  # torch raises many kinds; the user needs to know it was the export
        raise TraceError(f"torch.export could not trace {type(model).__name__}: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}") from error
    finally:
        model.train(was_training)
    return import_exported(_functional(exported), owners or {})


def _in_place(target) -> bool:
    """``aten.add_.Tensor``, ``aten.detach_.default``: an op that writes into its first argument."""
    packet = getattr(target, "_schema", None)
    return packet is not None and any(a.alias_info is not None and a.alias_info.is_write for a in packet.arguments)


def _functional(exported: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """The program without in-place ops (Hugging Face's ``masked_fill_``, ``add_``, ``detach_``):
    torch's functionalization rewrites each into its functional form and threads the new
    value to later readers. Done only when needed: it costs a re-trace."""
    if not any(n.op == "call_function" and _in_place(n.target) for n in exported.graph.nodes):
        return exported
    with torch.no_grad():
        return exported.run_decompositions({})


def _unaliased(args, kwargs):
    """Example inputs that share memory are cloned apart: torch.export would merge
    them into one input, and the plan would compute with one in place of the other."""
    from torch.utils._pytree import tree_map
    seen: set = set()

    def apart(value):
        if not isinstance(value, torch.Tensor):
            return value
        key = value.untyped_storage().data_ptr() if value.numel() else id(value)
        if key in seen:
            return value.clone()
        seen.add(key)
        return value
    return tree_map(apart, args), tree_map(apart, kwargs)


def reference_outputs(model: torch.nn.Module, example_inputs) -> list[torch.Tensor]:
    """The model's outputs computed in float64 (on a float64 copy of the model
    and of its floating inputs), called as ``trace`` calls it
    (``use_cache=False`` where accepted) and flattened in the order the traced
    graph returns them: what mpcc's results are compared against."""
    import copy

    from torch.utils._pytree import tree_leaves, tree_map
    args, kwargs = _split_inputs(model, example_inputs)
    widen = lambda t: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    args, kwargs = tree_map(widen, args), tree_map(widen, kwargs)
    with torch.no_grad():
        reference = copy.deepcopy(model).double()
        return [t.double() for t in tree_leaves(reference(*args, **kwargs)) if isinstance(t, torch.Tensor)]


def _split_inputs(model, example_inputs) -> tuple[tuple, dict]:
    if isinstance(example_inputs, Mapping):
        kwargs = dict(example_inputs)
        args: tuple = ()
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    elif isinstance(example_inputs, torch.Tensor):
        args, kwargs = (example_inputs,), {}
    else:
        raise TraceError(f"example_inputs must be a dict of tensors or a tuple, not {type(example_inputs).__name__}")
    try:
        accepts_cache = "use_cache" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        accepts_cache = False
    if accepts_cache and "use_cache" not in kwargs:
        kwargs["use_cache"] = False  # a KV cache object is not a tensor; secure generation manages its own
    return args, kwargs


def _tensor_type(fx_node: torch.fx.Node, vis: str = "?") -> TensorType:
    value = fx_node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        raise UnsupportedOpError(str(fx_node.target), module_path(fx_node), fx_node.name,
                                 f"its result is a {type(value).__name__}, not a tensor")
    try:
        shape = tuple(int(s) for s in value.shape)
    except TypeError:
        raise UnsupportedOpError(str(fx_node.target), module_path(fx_node), fx_node.name, "dynamic shapes are not supported")
    return TensorType(shape, kind_of_dtype(value.dtype), vis)


def _attr_value(value: Any, where: tuple) -> Any:
    if isinstance(value, torch.dtype):
        return kind_of_dtype(value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_attr_value(v, where) for v in value]
    raise UnsupportedOpError(*where, f"argument value {value!r} of type {type(value).__name__}")


class _Importer:
    def __init__(self, exported: torch.export.ExportedProgram, owners: Mapping[str, str]):
        self.exported = exported
        self.owners = dict(owners)
        self.nodes: list[Node] = []
        self.alias: dict[str, str | None] = {}  # fx name -> IR value name (None: not a tensor)
        self.splits: dict[str, tuple[str, int, list[tuple[int, int]]]] = {}
        specs = exported.graph_signature.input_specs
        self.specs = {spec.arg.name: spec for spec in specs if hasattr(spec.arg, "name")}

    def value(self, fx_node: torch.fx.Node, user: torch.fx.Node) -> str:
        name = self.alias.get(fx_node.name, fx_node.name)
        if name is None:
            raise UnsupportedOpError(str(user.target), module_path(user), user.name,
                                     f"argument {fx_node.name} is not a tensor")
        return name

    def add(self, node: Node) -> None:
        self.nodes.append(node)

    def run(self) -> Graph:
        user_inputs = set()
        unsupported: dict[str, list[UnsupportedOpError]] = {}   # op -> each place it occurs
        failed: set[str] = set()       # fx nodes not imported: those that read them are skipped, not reported
        for fx_node in self.exported.graph.nodes:
            if fx_node.op == "placeholder":
                user_inputs |= self.placeholder(fx_node)
            elif fx_node.op == "call_function":
                if any(arg.name in failed for arg in fx_node.all_input_nodes):   # reads an op not imported
                    failed.add(fx_node.name)
                    if not _known(fx_node.target):
                        unsupported.setdefault(str(fx_node.target), []).append(
                            UnsupportedOpError(str(fx_node.target), module_path(fx_node), fx_node.name))
                    continue
                try:
                    self.call(fx_node)
                except UnsupportedOpError as error:   # keep going: report every unsupported op at once
                    unsupported.setdefault(error.op, []).append(error)
                    failed.add(fx_node.name)
            elif fx_node.op == "output":
                if unsupported:
                    raise UnsupportedOpsError(unsupported)
                outputs = [self.value(n, fx_node) for n in fx_node.args[0] if isinstance(n, torch.fx.Node)]
            else:
                raise UnsupportedOpError(fx_node.op, module_path(fx_node), fx_node.name, "unexpected FX node kind")
        unknown = set(self.owners) - user_inputs
        if unknown:
            raise TraceError(f"owners names inputs the model does not take: {sorted(unknown)}; inputs are {sorted(user_inputs)}")
        return Graph(tuple(self.nodes), tuple(outputs))

    def placeholder(self, fx_node) -> set[str]:
        spec = self.specs.get(fx_node.name)
        kind = spec.kind.name if spec is not None else "USER_INPUT"
        if kind == "USER_INPUT":
            if not isinstance(fx_node.meta.get("val"), torch.Tensor):
                self.alias[fx_node.name] = None  # a baked-in Python value such as use_cache=False
                return set()
            owner = self.owners.get(fx_node.name, "client")
            if owner not in OWNERS:
                raise TraceError(f"owner of input {fx_node.name!r} must be one of {OWNERS}, not {owner!r}")
            self.add(Node(fx_node.name, "input", (), {"owner": owner}, _tensor_type(fx_node, owner)))
            return {fx_node.name}
        if kind == "PARAMETER" or (kind == "BUFFER" and spec.persistent):
            self.add(Node(fx_node.name, "param", (), {"key": spec.target}, _tensor_type(fx_node, "server"),
                          spec.target.rsplit(".", 1)[0] if "." in spec.target else ""))
            return set()
        if kind in ("BUFFER", "CONSTANT_TENSOR"):
            value = self.exported.constants[spec.target]
            tensor_type = TensorType(tuple(value.shape), kind_of_dtype(value.dtype), "public")
            self.add(Node(fx_node.name, "const", (), {"value": value.detach().to(_interp_dtype(value))}, tensor_type))
            return set()
        raise UnsupportedOpError(f"placeholder kind {kind}", "", fx_node.name)

    def call(self, fx_node: torch.fx.Node) -> None:
        target = fx_node.target
        where = (str(target), module_path(fx_node), fx_node.name)
        if target is operator.getitem:
            return self.getitem(fx_node)
        overload = _overload_name(target)
        if overload in ASSERT_OPS:
            self.alias[fx_node.name] = None
            return
        if overload in IDENTITY_OPS:
            if overload.endswith("dropout.default") and len(fx_node.args) > 2 and fx_node.args[2]:
                raise UnsupportedOpError(*where, "dropout in training mode (call model.eval())")
            self.alias[fx_node.name] = self.value(fx_node.args[0], fx_node)
            return
        if overload in CAST_OPS:
            source = self.value(fx_node.args[0], fx_node)
            node_type = _tensor_type(fx_node)
            source_kind = self.kind_of(source)
            if node_type.kind == source_kind:
                self.alias[fx_node.name] = source
            else:
                self.add(Node(fx_node.name, "cast", (source,), {"dtype": node_type.kind}, node_type, where[1]))
            return
        if overload in MULTI_OUTPUT_OPS:
            return self.split(fx_node)
        if overload not in ATEN_TO_IR:
            raise UnsupportedOpError(*where)
        ir_name, renames, fixed = ATEN_TO_IR[overload]
        operands, attrs = self.bind(fx_node, target._schema, renames, fixed, get_op(ir_name), where)
        self.add(Node(fx_node.name, ir_name, tuple(operands), attrs, _tensor_type(fx_node), where[1]))

    def kind_of(self, name: str) -> str:
        return next(n.type.kind for n in reversed(self.nodes) if n.name == name)

    def bind(self, fx_node, schema, renames, fixed, op, where):
        bound: dict[str, Any] = {}
        for position, argument in enumerate(schema.arguments):
            if position < len(fx_node.args) and not argument.kwarg_only:
                value = fx_node.args[position]
            elif argument.name in fx_node.kwargs:
                value = fx_node.kwargs[argument.name]
            elif argument.has_default_value():
                value = argument.default_value
            else:
                raise UnsupportedOpError(*where, f"missing argument {argument.name}")
            if argument.name in DROPPED_ARGS:
                continue
            bound[renames.get(argument.name, argument.name)] = value
        for key, value in fixed.items():
            bound.setdefault(key, value)
        params = [p for p in op.params if p in bound or p not in op.defaults]   # optional trailing params left out
        missing = [p for p in params if p not in bound]
        extra = [p for p in bound if p not in params]
        if missing or extra:
            raise UnsupportedOpError(*where, f"arguments {missing or extra} do not fit IR params {params}")
        operands, attrs = [], {}
        for param in params:
            value = bound[param]
            if isinstance(value, torch.fx.Node):
                operands.append(self.value(value, fx_node))
            elif isinstance(value, (list, tuple)) and any(isinstance(v, torch.fx.Node) for v in value):
                items = []
                for item in value:
                    if isinstance(item, torch.fx.Node):
                        operands.append(self.value(item, fx_node))
                        items.append(MARK)
                    else:
                        items.append(_attr_value(item, where))
                attrs[param] = items
            else:
                attrs[param] = _attr_value(value, where)
        return operands, attrs

    def split(self, fx_node) -> None:
        source = self.value(fx_node.args[0], fx_node)
        pieces = fx_node.meta.get("val")
        overload = _overload_name(fx_node.target)
        unbind = overload.startswith("unbind")
        dim_position = 1 if unbind else 2
        dim = fx_node.args[dim_position] if len(fx_node.args) > dim_position else fx_node.kwargs.get("dim", 0)
        ranges, start = [], 0
        for piece in pieces:
            size = 1 if unbind else int(piece.shape[dim])
            ranges.append((start, start + size))
            start += size
        self.splits[fx_node.name] = (source, dim, ranges, unbind)

    def getitem(self, fx_node) -> None:
        parent, index = fx_node.args
        if parent.name not in self.splits:
            raise UnsupportedOpError(f"getitem of {parent.target}", module_path(fx_node), fx_node.name,
                                     "multi-output op is not supported")
        source, dim, ranges, squeeze = self.splits[parent.name]
        start, end = ranges[index]
        origin = module_path(fx_node)
        if squeeze:
            node = Node(fx_node.name, "select", (source,), {"dim": dim, "index": start}, _tensor_type(fx_node), origin)
        else:
            node = Node(fx_node.name, "slice", (source,), {"dim": dim, "start": start, "end": end, "step": 1},
                        _tensor_type(fx_node), origin)
        self.add(node)


def _known(target) -> bool:
    """Whether the importer has a rule for this call target (its arguments may still be refused)."""
    if target is operator.getitem:
        return True
    overload = _overload_name(target)
    return any(overload in table for table in (ATEN_TO_IR, IDENTITY_OPS, ASSERT_OPS, CAST_OPS, MULTI_OUTPUT_OPS))


def _overload_name(target) -> str:
    text = str(target)
    return text[len("aten."):] if text.startswith("aten.") else text


def _interp_dtype(value: torch.Tensor) -> torch.dtype:
    from .ir import dtype_of_kind
    return dtype_of_kind(kind_of_dtype(value.dtype))


def import_exported(exported: torch.export.ExportedProgram, owners: Mapping[str, str] | None = None) -> Graph:
    """Import an ExportedProgram (from ``torch.export.export``) into the IR."""
    try:
        return _Importer(exported, owners or {}).run()
    except IRError as error:
        raise TraceError(f"import failed: {error}") from error
