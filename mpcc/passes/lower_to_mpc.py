"""Lower every shared value's op to an MPC op with a protocol.

Values a party knows stay plaintext ops run by that party; shape ops and
sums run unchanged on shares; everything else becomes an ``mpc.*`` op.
Operands that an MPC op needs as shares get an explicit ``mpc.share``
(trivial sharing: no message). Outputs are opened to the client.

    %linear = linear(%x, %p_w, %p_b) : real[1,8,32] shared
      ->  %linear = mpc.linear_server(%x, %p_w, %p_b, transpose=True) : real[1,8,32] shared
"""
from __future__ import annotations

import torch

from ..ir import Graph, IRError, Node, TensorType
from ..ops import get_op
from ..ops.attention import EXCLUDED
from .eliminate_dead_code import eliminate_dead_code
from .names import fresh_name
from .registry import register_pass

__all__ = ["lower_to_mpc", "LoweringError", "LOCAL_ON_SHARES", "LOWERING_RULES", "register_lowering"]

LOCAL_ON_SHARES = {"view", "reshape", "permute", "transpose", "t", "unsqueeze", "squeeze", "expand", "slice",
                   "select", "flatten", "repeat", "index", "gather", "index_select", "embedding", "sum", "cat",
                   "patches", "copy", "select_scatter", "slice_scatter", "stack", "repeat_interleave"}
NOT_VALUES = {"condition", "mask", "attn_mask"}   # operands read as 0/1 or as a mask, never as reals
SIMPLE = {"gelu": "mpc.gelu", "tanh": "mpc.tanh", "silu": "mpc.silu", "relu": "mpc.relu", "exp": "mpc.exp",
          "rsqrt": "mpc.rsqrt", "neg": "mpc.neg", "reciprocal": "mpc.reciprocal", "softmax": "mpc.softmax"}


class LoweringError(IRError):
    """A shared value's op has no MPC protocol (yet); names the op and module."""


class _Lowering:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.taken = {n.name for n in graph.nodes}
        self.nodes: list[Node] = []
        self.shared_copy: dict[tuple[str, bool], str] = {}
        self.static = graph.static_values()   # server values fixed for a deployment: masked once, sent once

    def vis(self, name):
        return self.graph[name].type.vis

    def emit(self, node: Node) -> str:
        self.nodes.append(node)
        return node.name

    def shared(self, name: str, origin: str, real: bool = False) -> str:
        """``name`` as shares: itself if shared, else one ``mpc.share`` node (reused).

        ``real``: the consumer reads the shares as fixed point, so a party's
        integers or bools are first cast to reals by that party (shares of an
        integer hold the integer itself, not 2^f times it).
        """
        if self.vis(name) == "shared":
            return name
        source = self.graph[name].type
        cast = real and source.kind != "real"
        if (name, cast) not in self.shared_copy:
            operand, kind = name, source.kind
            if cast:
                kind = "real"
                operand = self.emit(Node(fresh_name(f"{name}_real", self.taken), "cast", (name,), {"dtype": kind},
                                         TensorType(source.shape, kind, source.vis), origin))
            self.shared_copy[(name, cast)] = self.emit(Node(fresh_name(f"{name}_shared", self.taken), "mpc.share",
                                                            (operand,), {}, TensorType(source.shape, kind, "shared"),
                                                            origin))
        return self.shared_copy[(name, cast)]

    def real_values(self, node: Node) -> set[str]:
        """The operands ``node`` reads as fixed-point values: all of them when its
        result is real, except masks, conditions and indices."""
        if node.type.kind != "real":
            return set()
        op = get_op(node.op)
        skip = set(op.index_params) | NOT_VALUES
        return {o for p, o in zip(op.operand_params(node.attrs), node.operands) if p not in skip}

    def fail(self, node: Node, why: str):
        raise LoweringError(f"%{node.name} = {node.op}(...) in {node.origin or '<top>'}: {why}")

    def lower(self, node: Node) -> None:
        if node.type.vis != "shared":
            self.nodes.append(node)
            return
        make = lambda mpc_op, operands, attrs=None, name=None: self.emit(  # noqa: E731
            Node(name or node.name, mpc_op, tuple(operands), attrs or {}, node.type, node.origin))
        real_values = self.real_values(node) if node.op != "mul" else set()   # lower_mul: integers times reals exactly
        secret_ints = sorted(o for o in real_values if self.vis(o) == "shared" and self.graph[o].type.kind != "real")
        if secret_ints:
            self.fail(node, f"%{secret_ints[0]} is a secret {self.graph[secret_ints[0]].type.kind} used as a real: "
                            "turning shared integers into fixed point has no protocol yet")
        share = lambda name: self.shared(name, node.origin, real=name in real_values)  # noqa: E731
        rule = LOWERING_RULES.get(node.op)
        if rule is None:
            self.fail(node, f"no MPC protocol for {node.op!r} on shared values (see docs/protocols.md)")
        rule(self, node, make, share)

    def lower_local(self, node, make, share):
        """Shape ops and sums: the same on shares as on plaintext (indices must be public)."""
        op = get_op(node.op)
        params = op.operand_params(node.attrs)
        if any(p in op.index_params and self.vis(o) != "public" for p, o in zip(params, node.operands)):
            self.fail(node, "a secret index")
        make(node.op, [o if p in op.index_params else share(o) for p, o in zip(params, node.operands)], node.attrs)

    def lower_simple(self, node, make, share):
        """One shared operand to its ``mpc.`` op, with the attributes that op takes."""
        self.lower_as(node, make, share, SIMPLE[node.op])

    def lower_as(self, node, make, share, target: str):
        """One shared operand to the op ``target``, with the attributes it takes."""
        params = get_op(target).params
        make(target, [share(node.operands[0])], {k: v for k, v in node.attrs.items() if k in params})

    def lower_div(self, node, make, share):
        """x / y for a public y (a scalar, or a tensor such as DeBERTa's 0-d sqrt): x times 1/y."""
        if node.attrs.get("rounding_mode"):
            self.fail(node, f"division with rounding_mode={node.attrs['rounding_mode']!r} on a secret")
        if len(node.operands) == 1:
            make("mpc.mul_scalar", [share(node.operands[0])], {"value": 1.0 / node.attrs["other"]})
            return
        x, y = node.operands
        if self.vis(y) != "public":
            self.fail(node, f"division by a {self.vis(y)} value (%{y}): only division by public values has a "
                            "protocol")
        divisor = self.graph[y]
        kind = "real"   # 1/y of an integer y is a real
        inverse = fresh_name(f"{y}_inverse", self.taken)
        if divisor.op == "const":   # folded here: a constant's inverse is a constant
            value = 1.0 / divisor.attrs["value"].to(torch.float64)
            self.emit(Node(inverse, "const", (), {"value": value}, TensorType(divisor.type.shape, kind, "public"),
                           node.origin))
        else:
            self.emit(Node(inverse, "reciprocal", (y,), {}, TensorType(divisor.type.shape, kind, "public"),
                           node.origin))
        make("mpc.mul_public", [share(x), inverse], {"truncate": True})

    def lower_pow(self, node, make, share):
        if node.attrs.get("exponent") != 2:
            self.fail(node, f"pow with exponent {node.attrs.get('exponent')!r}: only squares have a protocol")
        make("mpc.square", [share(node.operands[0])])

    def lower_sdpa(self, node, make, share):
        a = node.attrs
        named = dict(zip(get_op("sdpa").operand_params(a), node.operands))
        q, k, v = (named[p] for p in ("query", "key", "value"))
        mask, bias = named.get("attn_mask"), named.get("bias")
        if mask is not None and self.vis(mask) != "public":
            if bias is not None:
                self.fail(node, "an attention with both a bias and a mask that is not public")
            mask, bias = self.split_mask(node, mask)
        attrs = {key: a[key] for key in ("dropout_p", "is_causal", "scale", "enable_gqa", "softmax") if key in a}
        attrs.update({"attn_mask": None} if mask is None else {})
        make("mpc.sdpa", [share(q), share(k), share(v)] + ([mask] if mask else []) + ([share(bias)] if bias else []),
             attrs)

    def split_mask(self, node, mask: str) -> tuple[str | None, str]:
        """A mask that is not public as (public keep mask, additive bias): T5's
        ``where(public_keep, position_bias, finfo.min)`` becomes the keep mask's
        exclusions and the server's bias; any other is all bias."""
        source = self.graph[mask]
        other = source.attrs.get("other")
        if source.op == "where" and len(source.operands) == 2 and isinstance(other, (int, float)) \
                and other <= EXCLUDED and self.graph[source.operands[0]].op == "const":
            keep = self.graph[source.operands[0]].attrs["value"].bool()
            additive = torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, -torch.inf)
            name = self.emit(Node(fresh_name(f"{node.name}_mask", self.taken), "const", (), {"value": additive},
                                  TensorType(tuple(keep.shape), "real", "public"), node.origin))
            return name, source.operands[1]
        if source.op == "add" and len(source.operands) == 2 and source.attrs.get("alpha", 1) == 1:
            for public, other in (source.operands, source.operands[::-1]):   # T5's bias + causal finfo.min
                if self.graph[public].op == "const" and self.graph[public].type.kind == "real":
                    return public, other
        if self.vis(mask) == "client":
            self.fail(node, "the attention mask is the client's, it must be public: declare the mask input public "
                            "(owners={'attention_mask': 'public'}), which reveals the padding")
        if source.type.kind != "real":
            self.fail(node, f"the attention mask %{mask} is a {source.type.vis} {source.type.kind}: a keep mask must "
                            "be public (a secret one would reveal which scores it excludes)")
        return None, mask

    def lower_mean(self, node, make, share):
        a = node.attrs
        dims = a.get("dim")
        shape = self.graph[node.operands[0]].type.shape
        count = 1
        for d in (dims if dims is not None else range(len(shape))):
            count *= shape[d]
        total = fresh_name(f"{node.name}_sum", self.taken)
        self.emit(Node(total, "sum", (share(node.operands[0]),), {"dim": dims, "keepdim": a.get("keepdim", False),
                                                                  "dtype": None}, node.type, node.origin))
        make("mpc.mul_scalar", [total], {"value": 1.0 / count})

    def lower_reduce_max(self, node, make, share):
        dim = node.attrs.get("dim")
        dim = dim[0] if isinstance(dim, (list, tuple)) and len(dim) == 1 else dim
        if not isinstance(dim, int):
            self.fail(node, f"{node.op} needs exactly one axis")
        make(f"mpc.{node.op}", [share(node.operands[0])], {"dim": dim, "keepdim": node.attrs.get("keepdim", False)})

    def lower_where(self, node, make, share):
        named = dict(zip(get_op("where").operand_params(node.attrs), node.operands))
        branches = []
        for branch in ("self", "other"):
            if branch in named:
                branches.append(share(named[branch]))
                continue
            # a scalar branch (where.ScalarOther / ScalarSelf): a public constant, shared (no message)
            value = torch.tensor(float(node.attrs[branch]), dtype=torch.float64)
            const = self.emit(Node(fresh_name(f"{node.name}_{branch}", self.taken), "const", (), {"value": value},
                                   TensorType((), "real", "public"), node.origin))
            branches.append(self.emit(Node(fresh_name(f"{const}_shared", self.taken), "mpc.share", (const,), {},
                                           TensorType((), "real", "shared"), node.origin)))
        cond = named["condition"]
        if self.vis(cond) == "public":
            make("mpc.where_public", [cond] + branches)
        else:
            make("mpc.where", [share(cond)] + branches)

    def lower_masked_fill(self, node, make, share):
        x, mask = node.operands[:2]
        if self.vis(mask) != "public" or len(node.operands) != 2:
            self.fail(node, "masked_fill needs a public mask and a scalar value")
        make("mpc.masked_fill_public", [share(x), mask], {"value": node.attrs["value"]})

    def lower_add(self, node, make, share):
        op, a = node.op, node.attrs
        alpha = a.get("alpha", 1)
        if len(node.operands) == 2:
            if alpha != 1:
                self.fail(node, "add/sub with alpha != 1")
            x, y = (share(o) for o in node.operands)
            if op == "rsub":
                x, y = y, x
            make("mpc.add" if op == "add" else "mpc.sub", [x, y])
        else:
            x = share(node.operands[0])
            value = a["other"] * alpha
            if op == "rsub":
                negated = fresh_name(f"{node.name}_neg", self.taken)
                self.emit(Node(negated, "mpc.neg", (x,), {}, node.type, node.origin))
                make("mpc.add_public", [negated], {"value": value})
            else:
                make("mpc.add_public", [x], {"value": value if op == "add" else -value})

    def lower_mul(self, node, make, share):
        """Integers times reals need no truncation: an integer operand (secret or
        not) with a real one goes to ``mpc.mul`` without it, whose shares of
        the integer are the integer itself; the local forms (``mul_public``,
        ``mul_server``, ``mul_scalar``) read a secret operand as fixed point."""
        a = node.attrs
        if len(node.operands) == 1:
            value = a["other"]
            x = node.operands[0]
            if self.graph[x].type.kind != "real" and node.type.kind == "real":
                self.fail(node, f"%{x} is a secret {self.graph[x].type.kind} times the real {value}: turning shared "
                                "integers into fixed point has no protocol yet")
            if float(value).is_integer() or node.type.kind != "real":
                make("mpc.mul_public", [share(x)], {"value": value, "truncate": False})
            else:
                make("mpc.mul_scalar", [share(x)], {"value": value})
            return
        x, y = node.operands
        plain_first = {"public": 0, "server": 1}   # y: the operand a cheaper protocol can take in the clear
        if plain_first.get(self.vis(x), 2) < plain_first.get(self.vis(y), 2):
            x, y = y, x
        y_vis = self.vis(y)
        kinds = {self.graph[x].type.kind, self.graph[y].type.kind}
        if self.graph[x].type.kind != "real" and node.type.kind == "real":   # an integer times a real
            make("mpc.mul", [share(x), share(y)], {"truncate": False})
        elif y_vis == "public":
            make("mpc.mul_public", [share(x), y], {"truncate": self.graph[y].type.kind == "real"})
        elif y_vis == "server" and self.graph[y].type.kind == "real" and y in self.static:
            make("mpc.mul_server", [share(x), y])   # a server input changes per inference: shared, Beaver below
        else:
            make("mpc.mul", [share(x), share(y)], {"truncate": kinds == {"real"}})

    def lower_matmul(self, node, make, share):
        a = node.attrs
        if node.op == "linear":
            x, w, *bias = node.operands
            transpose, bias_attr = True, {} if bias else {"bias": None}
        elif node.op == "addmm":
            b, x, w = node.operands
            if a.get("beta", 1) != 1 or a.get("alpha", 1) != 1:
                self.fail(node, "addmm with beta or alpha != 1")
            bias, transpose, bias_attr = [b], False, {}
        else:
            x, w = node.operands
            bias, transpose, bias_attr = [], False, {"bias": None}
        if self.vis(w) == "server" and self.graph[w].op == "param" and not bias and not transpose and \
                self.graph[x].op == "one_hot" and self.vis(x) == "client":   # (a param: its bound is checked)
            make("mpc.lookup_server", [x, w])   # the client's ids: a narrow ring, no truncation
        elif self.vis(w) == "server" and w in self.static and all(self.vis(b) == "server" for b in bias):
            make("mpc.linear_server", [share(x), w] + bias, {"transpose": transpose, **bias_attr})
        elif self.vis(w) == "server":   # W - B is sent once per deployment: only for values fixed for it
            self.fail(node, f"%{w} is a server value that changes per inference (it depends on a server input); "
                            "only the model's weights can be the plaintext operand of a server linear")
        elif self.vis(w) == "shared" or self.vis(x) == "shared":
            if bias or transpose:
                self.fail(node, "linear with a secret-shared weight: write it as matmul + add")
            make("mpc.matmul", [share(x), share(w)], {"shift": 0})
        else:
            self.fail(node, f"matmul of {self.vis(x)} and {self.vis(w)} operands")

    def lower_masked_softmax(self, node, make, share):
        x, mask = node.operands
        make("mpc.softmax_masked", [share(x), mask], dict(node.attrs))

    def lower_pad(self, node, make, share):
        """Zero padding moves shares only; another value would have to be added by one party."""
        if node.attrs.get("mode", "constant") != "constant" or node.attrs.get("value") not in (None, 0, 0.0):
            self.fail(node, f"pad of a secret with mode={node.attrs.get('mode')!r}, value={node.attrs.get('value')!r}:"
                            " only constant zeros")
        self.lower_local(node, make, share)

    def lower_layer_norm(self, node, make, share, target="mpc.layer_norm"):
        """LayerNorm, its substitutes and RMSNorm (no bias): the weight and bias must be the
        server's weights (masked once per deployment) or public."""
        a = node.attrs
        what = "rms_norm" if target == "mpc.rms_norm" else "layer_norm"
        named = dict(zip(get_op(node.op).operand_params(a), node.operands))
        for key in ("weight", "bias"):
            if key in named and self.vis(named[key]) not in ("server", "public"):
                self.fail(node, f"{what} {key} must be the server's or public")
            if key == "weight" and key in named and self.vis(named[key]) == "server" and named[key] not in self.static:
                self.fail(node, f"{what} weight must be a weight of the model (fixed for the deployment)")
        operands = [share(named["input"])] + [named[k] for k in ("weight", "bias") if k in named]
        attrs = {"normalized_shape": a["normalized_shape"], "eps": a["eps"]}
        attrs.update({k: None for k in ("weight", "bias") if k not in named and k in get_op(target).params})
        make(target, operands, attrs)


# op -> how to lower it when its result is shared (``_Lowering`` method or a function of the same form);
# an approximation preset registers rules for its substitute ops with ``register_lowering``
LOWERING_RULES: dict = {
    **{op: _Lowering.lower_local for op in LOCAL_ON_SHARES},
    **{op: _Lowering.lower_simple for op in SIMPLE},
    "add": _Lowering.lower_add, "sub": _Lowering.lower_add, "rsub": _Lowering.lower_add,
    "mul": _Lowering.lower_mul, "div": _Lowering.lower_div, "pow": _Lowering.lower_pow,
    **{op: _Lowering.lower_matmul for op in ("linear", "addmm", "mm", "matmul", "bmm")},
    "sdpa": _Lowering.lower_sdpa, "layer_norm": _Lowering.lower_layer_norm, "mean": _Lowering.lower_mean,
    "rms_norm": lambda lowering, node, make, share: lowering.lower_layer_norm(node, make, share, "mpc.rms_norm"),
    "pad": _Lowering.lower_pad, "masked_softmax": _Lowering.lower_masked_softmax,
    "amax": _Lowering.lower_reduce_max, "argmax": _Lowering.lower_reduce_max,
    "where": _Lowering.lower_where, "masked_fill": _Lowering.lower_masked_fill,
}


def register_lowering(op: str):
    """Register ``rule(lowering, node, make, share)`` as the lowering of ``op`` on shared values."""
    def wrap(rule):
        if op in LOWERING_RULES:
            raise ValueError(f"a lowering rule for {op} is registered twice")
        LOWERING_RULES[op] = rule
        return rule
    return wrap


@register_pass("lower_to_mpc")
def lower_to_mpc(graph: Graph) -> Graph:
    lowering = _Lowering(graph)
    for node in graph.nodes:
        lowering.lower(node)
    outputs = []
    for name in graph.outputs:
        if lowering.vis(name) in ("client", "public"):
            outputs.append(name)
            continue
        shared = lowering.shared(name, "")
        source = graph[name].type
        outputs.append(lowering.emit(Node(fresh_name(f"{name}_revealed", lowering.taken), "mpc.reveal", (shared,),
                                          {"to": "client"}, TensorType(source.shape, source.kind, "client"))))
    return eliminate_dead_code(Graph(tuple(lowering.nodes), tuple(outputs)))   # a divisor replaced by its inverse
