"""Every ``mpc.*`` op of the registry, run as a one-op plan by both parties
(the real executor, dealer and transport), against its plaintext reference in
float64.

Each op has one case builder in ``CASES``: it draws values (with hypothesis,
boundary values mixed in or always present), the visibility of each operand
(shared, the server's, public) and the attributes, within the domain the op's
docstring states, and the tolerance that docstring states. The operands are
put on the fixed-point grid first, so that the reference sees exactly the
numbers the parties encode. A secret real operand is the sum (``mpc.add``) of a
client input and a server input, so both parties hold non-zero shares; a
secret integer is split with a uniform int64 mask.

Each run also checks that the rounds and bytes the transport counted and the
dealer's material equal the cost model's. A new op in the registry without a
case fails ``test_cases_cover_the_registry`` and its own parametrisation of
``test_op_protocol_matches_reference``. The ``PLANTED`` defects show that the
test fails when a protocol is broken.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from mpcc.ir import Graph, Node, TensorType, kind_of_dtype
from mpcc.ops import REGISTRY, arith, compare, nonlinear as nl, power
from mpcc.ops.substitutes import ERF_EDGE
from mpcc.ops.wire import share_of
from mpcc.plan import Plan
from mpcc.runtime import RunError, Session
from mpcc.verify import lint

FRAC = 16
ULP = 2.0 ** -FRAC
CMP_LIMIT = 2.0 ** 15            # LTZ: |x| < 2^31 ring units at f = 16 (compare.py)
MAX_LIMIT = 2.0 ** 14            # the max tournament compares differences: |x| < 2^14 keeps them in range
TRUNC_ULPS = 2 * ULP             # trunc is faithful up to -1 ulp, and floors: a product is within 2 ulps
MPC_OPS = sorted(name for name in REGISTRY if name.startswith("mpc."))


# ----------------------------------------------------------------------------- how operands are made
@dataclass
class Arg:
    """One operand of the op under test: its plaintext value and who holds it.

    vis ``shared``: secret shares (of a client and a server part, or of one
    owner's value for bools); ``client``/``server``/``public``: that party's
    or everyone's plaintext, from an ``input``, a ``param`` or a ``const``.
    """
    value: torch.Tensor
    vis: str = "shared"
    source: str = "input"          # input | param | const (plaintext operands)
    owner: str = "client"          # shared bools: whose value is shared


@dataclass
class Computed:
    """A shared operand computed by another MPC op (``mpc.trunc`` needs an untruncated product)."""
    op: str
    args: dict[str, Any]
    attrs: dict = field(default_factory=dict)

    @property
    def value(self):
        return _reference(self.op, self.args, self.attrs)


@dataclass
class Case:
    args: dict[str, Any]           # param -> Arg | Computed, in the op's param order
    attrs: dict = field(default_factory=dict)
    atol: float | torch.Tensor = 0.0
    rtol: float = 0.0
    check: Callable | None = None  # custom comparison (got, want, case) instead of atol/rtol
    out_vis: str = "shared"
    plus_client_zero: bool = False  # reveal out + (a client's zero): the server opens nothing of its own alone


def _reference(op_name, args, attrs):
    op = REGISTRY[op_name]
    operands = [a.value for p, a in args.items()]
    with torch.no_grad():
        return op.evaluate(operands, attrs)


class _Builder:
    """The nodes, inputs and weights of a one-op plan."""

    def __init__(self, seed: int):
        self.nodes: list[Node] = []
        self.inputs: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}
        self.generator = torch.Generator().manual_seed(seed)

    def emit(self, name, op, operands, attrs, kind, shape, vis):
        self.nodes.append(Node(name, op, tuple(operands), attrs, TensorType(tuple(shape), kind, vis)))
        return name

    def plain(self, name, value, vis, source):
        kind = kind_of_dtype(value.dtype)
        if source == "param":
            assert vis == "server"
            self.weights[name] = value
            return self.emit(name, "param", (), {"key": name}, kind, value.shape, vis)
        if source == "const":
            assert vis == "public"
            return self.emit(name, "const", (), {"value": value}, kind, value.shape, vis)
        self.inputs[name] = value
        return self.emit(name, "input", (), {"owner": vis}, kind, value.shape, vis)

    def share(self, name, source_name, value):
        return self.emit(name, "mpc.share", (source_name,), {}, kind_of_dtype(value.dtype), value.shape, "shared")

    def operand(self, param: str, arg) -> str:
        if isinstance(arg, Computed):
            names = [self.operand(f"{param}_{p}", a) for p, a in arg.args.items()]
            value = arg.value
            return self.emit(param, arg.op, names, arg.attrs, kind_of_dtype(value.dtype), value.shape, "shared")
        value = arg.value
        if arg.vis != "shared":
            return self.plain(param, value, arg.vis, arg.source)
        if value.dtype == torch.bool:   # a client's or server's mask, shared as lowering does
            return self.share(param, self.plain(f"{param}_{arg.owner}", value, arg.owner, "input"), value)
        if value.dtype == torch.int64:  # uniform int64 mask: exact wraparound
            mask = torch.randint(-2**63, 2**63 - 1, value.shape, dtype=torch.int64, generator=self.generator)
        else:                          # a real mask on the grid, small enough that the sum is exact
            mask = torch.round((torch.rand(value.shape, generator=self.generator, dtype=torch.float64) - 0.5)
                               * 2.0 ** (30 + FRAC)) * ULP
        client = self.share(f"{param}_c_sh", self.plain(f"{param}_c", value - mask, "client", "input"), value)
        server = self.share(f"{param}_s_sh", self.plain(f"{param}_s", mask, "server", "input"), value)
        return self.emit(param, "mpc.add", (client, server), {}, kind_of_dtype(value.dtype), value.shape, "shared")


def run_case(op_name: str, case: Case, seed: int = 0):
    """Build the one-op plan, run both parties, return (client's output, reference)."""
    want = _reference(op_name, case.args, case.attrs)
    builder = _Builder(seed)
    operands = [builder.operand(f"arg_{p}", a) for p, a in case.args.items()]
    kind = kind_of_dtype(want.dtype)
    out = builder.emit("out", op_name, operands, case.attrs, kind, want.shape, case.out_vis)
    if case.plus_client_zero:
        zero = builder.share("zero_sh", builder.plain("zero", torch.zeros_like(want), "client", "input"), want)
        out = builder.emit("out_plus_zero", "mpc.add", (out, zero), {}, kind, want.shape, "shared")
    if case.out_vis == "shared":
        out = builder.emit("out_revealed", "mpc.reveal", (out,), {"to": "client"}, kind, want.shape, "client")
    plan = Plan(lint(Graph(tuple(builder.nodes), (out,)), shapes=True), frac_bits=FRAC)
    try:
        (got,), stats = Session(plan, builder.weights, progress=False).run(builder.inputs)
    except RunError as error:
        raise AssertionError(f"{op_name}: the two-party run failed: {error}") from error
    cost = plan.cost()
    assert stats.rounds == cost.rounds, f"{op_name}: rounds differ from the cost model"
    assert stats.online_bytes == (cost.per_party[0].online_bytes, cost.per_party[1].online_bytes), \
        f"{op_name}: online bytes differ from the cost model"
    assert stats.offline_bytes == cost.offline_bytes, f"{op_name}: dealer material differs from the cost model"
    return got, want


def check_case(op_name: str, case: Case, seed: int = 0):
    got, want = run_case(op_name, case, seed)
    assert tuple(got.shape) == tuple(want.shape), \
        f"{op_name}: result shape {tuple(got.shape)}, the reference's {tuple(want.shape)}"
    if want.dtype != torch.bool:   # a revealed bool comes back as int64: test_reveal_of_a_shared_bool_gives_bools
        assert got.dtype == want.dtype, f"{op_name}: result dtype {got.dtype}, the reference's {want.dtype}"
    if case.check is not None:
        case.check(got, want, case)
        return
    assert_close(op_name, got, want, case.atol, case.rtol, case)


def assert_close(op_name, got, want, atol, rtol, case=None):
    """|got - want| <= atol + rtol |want| elementwise; the message shows the first element that is not."""
    want = want.to(torch.float64)
    err = (got.to(torch.float64) - want).abs()
    bound = torch.broadcast_to(torch.as_tensor(atol + rtol * want.abs(), dtype=torch.float64), err.shape)
    bad = (err > bound).nonzero()
    if len(bad):
        at = tuple(bad[0].tolist())
        args = case.args.items() if case else ()
        inputs = {p: a.value[at] if a.value.shape == want.shape else a.value for p, a in args}
        raise AssertionError(f"{op_name}: differs from the reference by {float(err.max()):.3g} (bound "
                             f"{float(bound[at]):.3g}) at {list(at)}: got {float(got[at])}, want {float(want[at])}; "
                             f"attrs {case.attrs if case else {}}; inputs there {inputs}")


# ----------------------------------------------------------------------------- value strategies
def grid(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * 2.0 ** FRAC) / 2.0 ** FRAC


def shapes(min_dims=1, max_dims=3, max_side=4):
    return st.lists(st.integers(1, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


def reals(draw, shape, low, high, edges=()):
    """Values in [low, high] on the grid, half of them (on average) from ``edges``."""
    element = st.floats(low, high, allow_nan=False, allow_infinity=False)
    if edges:
        element = st.one_of(st.sampled_from(list(edges)), element)
    count = math.prod(shape)
    values = draw(st.lists(element, min_size=count, max_size=count))
    return grid(torch.tensor(values, dtype=torch.float64).reshape(shape)).clamp(low, high)


def with_edges(draw, low, high, edges):
    """A tensor (*batch, len(edges) + n) whose every row holds all the ``edges`` and n drawn values."""
    batch = draw(shapes(0, 2, 3))
    body = reals(draw, (*batch, draw(st.integers(0, 5))), low, high, edges)
    edge_row = grid(torch.tensor(edges, dtype=torch.float64)).expand(*batch, len(edges))
    return torch.cat([edge_row, body], -1)


def ints(draw, shape, low=-2**40, high=2**40):
    count = math.prod(shape)
    element = st.one_of(st.sampled_from([0, 1, -1, low, high]), st.integers(low, high))
    return torch.tensor(draw(st.lists(element, min_size=count, max_size=count)), dtype=torch.int64).reshape(shape)


def bools(draw, shape):
    count = math.prod(shape)
    return torch.tensor(draw(st.lists(st.booleans(), min_size=count, max_size=count)), dtype=torch.bool).reshape(shape)


def suffix(draw, shape):
    """A shape that broadcasts against ``shape`` (a suffix of it, or itself)."""
    return shape[draw(st.integers(0, len(shape) - 1)):]


def server_arg(draw, value):
    return Arg(value, "server", draw(st.sampled_from(["param", "input"])))


def weight_arg(value):
    """A server operand masked once per deployment (D = W - B): a weight, never a server
    input, which changes per inference (the server refuses that plan: runtime/policy.py)."""
    return Arg(value, "server", "param")


def public_arg(draw, value):
    return Arg(value, "public", draw(st.sampled_from(["input", "const"])))


# ----------------------------------------------------------------------------- one case builder per op
def case_share(draw):
    shape = draw(shapes())
    kind = draw(st.sampled_from(["real", "int", "bool"]))
    value = {"real": lambda: reals(draw, shape, -1e6, 1e6, [0.0, ULP, -ULP]),
             "int": lambda: ints(draw, shape), "bool": lambda: bools(draw, shape)}[kind]()
    vis = draw(st.sampled_from(["client", "server", "public"]))
    source = {"client": "input", "server": draw(st.sampled_from(["input", "param"])),
              "public": draw(st.sampled_from(["input", "const"]))}[vis]
    # the server refuses to open to the client what depends on no client input, public ones included
    # (the server knows those too: runtime/policy.py)
    return Case({"self": Arg(value, vis, source)}, plus_client_zero=vis != "client" or source == "const")


def case_reveal(draw):
    shape = draw(shapes())
    value = reals(draw, shape, -1e6, 1e6, [0.0, ULP, -ULP]) if draw(st.booleans()) else ints(draw, shape)
    return Case({"self": Arg(value)}, {"to": "client"}, out_vis="client")


def _secret_pair(draw, low=-1e6, high=1e6):
    shape = draw(shapes())
    if draw(st.booleans()):
        return (Arg(reals(draw, shape, low, high, [0.0, ULP, -ULP])),
                Arg(reals(draw, suffix(draw, shape), low, high, [0.0, ULP, -ULP])))
    return Arg(ints(draw, shape)), Arg(ints(draw, suffix(draw, shape)))


def case_add(draw):
    x, y = _secret_pair(draw)
    return Case({"self": x, "other": y})


case_sub = case_add


def case_neg(draw):
    return Case({"self": _secret_pair(draw)[0]})


def case_add_public(draw):
    x = _secret_pair(draw)[0]
    if x.value.dtype == torch.int64:
        value = draw(st.integers(-2**20, 2**20))
    else:
        value = float(grid(torch.tensor(draw(st.floats(-1e6, 1e6)))))
    return Case({"self": x}, {"value": value})


def case_mul_public(draw):
    """The three forms lowering emits: a public real tensor (truncate), a public
    int tensor or an integer scalar (no truncation); and a real scalar."""
    shape = draw(shapes())
    x = Arg(reals(draw, shape, -1000, 1000, [0.0, ULP, -ULP]))
    form = draw(st.sampled_from(["real_tensor", "int_tensor", "int_scalar", "real_scalar"]))
    if form == "real_tensor":
        value = public_arg(draw, reals(draw, suffix(draw, shape), -100, 100, [0.0, ULP, 1.0, -1.0]))
        return Case({"self": x, "value": value}, {"truncate": True}, atol=TRUNC_ULPS)
    if form == "int_tensor":
        value = public_arg(draw, ints(draw, suffix(draw, shape), -1000, 1000))
        return Case({"self": x, "value": value}, {"truncate": False})
    if form == "int_scalar":
        return Case({"self": x}, {"value": draw(st.integers(-1000, 1000)), "truncate": False})
    value = float(grid(torch.tensor(draw(st.floats(-100, 100)))))
    return Case({"self": x}, {"value": value, "truncate": True}, atol=TRUNC_ULPS)


def case_mul(draw):
    """reals (truncated, within 2 ulps) or an int times a real or an int (exact)."""
    shape = draw(shapes())
    kinds = draw(st.sampled_from([("real", "real"), ("int", "real"), ("real", "int"), ("int", "int")]))
    make = {"real": lambda s: reals(draw, s, -1000, 1000, [0.0, ULP, -ULP, 1.0]),
            "int": lambda s: ints(draw, s, -1000, 1000)}
    x, y = Arg(make[kinds[0]](shape)), Arg(make[kinds[1]](suffix(draw, shape)))
    truncate = kinds == ("real", "real")
    return Case({"self": x, "other": y}, {"truncate": truncate}, atol=TRUNC_ULPS if truncate else 0.0)


def case_square(draw):
    return Case({"self": Arg(reals(draw, draw(shapes()), -3000, 3000, [0.0, ULP, -ULP]))}, atol=TRUNC_ULPS)


def case_matmul(draw):
    batch = draw(shapes(0, 1, 2))
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    x = reals(draw, (*batch, m, k), -100, 100, [0.0, ULP])
    y = reals(draw, (k, n) if draw(st.booleans()) else (*batch, k, n), -100, 100, [0.0, -ULP])
    return Case({"self": Arg(x), "other": Arg(y)}, {"shift": draw(st.sampled_from([0, 0, 1, 3]))}, atol=TRUNC_ULPS)


def case_linear_server(draw):
    batch = draw(shapes(1, 2, 3))
    k, n = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    transpose = draw(st.booleans())
    x = Arg(reals(draw, (*batch, k), -100, 100, [0.0, ULP]))
    weight = weight_arg(reals(draw, (n, k) if transpose else (k, n), -10, 10, [0.0, -ULP]))
    args, attrs = {"input": x, "weight": weight}, {"transpose": transpose}
    if draw(st.booleans()):
        args["bias"] = server_arg(draw, reals(draw, (n,), -10, 10, [0.0, ULP]))
    else:
        attrs["bias"] = None
    return Case(args, attrs, atol=TRUNC_ULPS)


def case_lookup_server(draw):
    """The client's one-hot rows (some rows empty) times the server's table, whose entries
    reach the lookup ring's edge (|T| < 2^14)."""
    batch = draw(shapes(1, 2, 3))
    vocab, width = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    ids = torch.tensor(draw(st.lists(st.integers(-1, vocab - 1), min_size=math.prod(batch),
                                     max_size=math.prod(batch)))).reshape(batch)
    one_hot = torch.nn.functional.one_hot(ids.clamp(min=0), vocab).to(torch.float64) * (ids >= 0).unsqueeze(-1)
    limit = 2.0 ** 14 - ULP
    table = reals(draw, (vocab, width), -limit, limit, [0.0, ULP, -limit, limit])
    return Case({"one_hot": Arg(one_hot, "client"), "weight": weight_arg(table)}, atol=0.0)


def case_mul_server(draw):
    shape = draw(shapes())
    x = Arg(reals(draw, shape, -1000, 1000, [0.0, ULP, -ULP]))
    return Case({"self": x, "other": weight_arg(reals(draw, suffix(draw, shape), -100, 100, [0.0, ULP, 1.0]))},
                atol=TRUNC_ULPS)


def case_trunc(draw):
    """Reals multiplied without truncation (2f fractional bits), then truncated by f: x * y."""
    shape = draw(shapes())
    product = Computed("mpc.mul", {"self": Arg(reals(draw, shape, -1000, 1000, [0.0, ULP, -ULP])),
                                   "other": Arg(reals(draw, shape, -1000, 1000, [0.0, ULP, -ULP]))},
                       {"truncate": False})
    return Case({"self": product}, {"shift": FRAC}, atol=TRUNC_ULPS)


def case_masked_fill_public(draw):
    shape = draw(shapes())
    mask = public_arg(draw, bools(draw, suffix(draw, shape)))
    value = float(grid(torch.tensor(draw(st.one_of(st.sampled_from([0.0, nl.MASK_FILL]), st.floats(-1e4, 1e4))))))
    return Case({"self": Arg(reals(draw, shape, -1e6, 1e6, [0.0, ULP])), "mask": mask}, {"value": value})


def case_where_public(draw):
    x, y = _secret_pair(draw)
    condition = public_arg(draw, bools(draw, suffix(draw, tuple(x.value.shape))))
    return Case({"condition": condition, "self": x, "other": y})


def case_where(draw):
    """A condition held by one party, shared (as lowering shares a client's or server's mask)."""
    x, y = _secret_pair(draw)
    owner = draw(st.sampled_from(["client", "server"]))
    condition = Arg(bools(draw, suffix(draw, tuple(x.value.shape))), "shared", owner=owner)
    return Case({"condition": condition, "self": x, "other": y})


# exp's docstring says "absolute error < 1e-5", less than one ulp (1.5e-5), which its final
# truncation cannot promise; it reaches 1.1 ulp (test_exp_documented_bound). Two ulps hold.
EXP_ATOL = 2 * ULP
CMP_EDGES = [0.0, ULP, -ULP, 2 * ULP, -2 * ULP, 0.5, -0.5, CMP_LIMIT - ULP, -(CMP_LIMIT - ULP), 2.0 ** 14, -2.0 ** 14]


def case_ltz(draw):
    if draw(st.booleans()):
        x = with_edges(draw, -(CMP_LIMIT - ULP), CMP_LIMIT - ULP, CMP_EDGES)
    else:   # integers: the same 31-bit range in ring units
        x = ints(draw, draw(shapes()), -(2**31 - 1), 2**31 - 1)
    return Case({"self": Arg(x)})


def case_relu(draw):
    return Case({"self": Arg(with_edges(draw, -(CMP_LIMIT - ULP), CMP_LIMIT - ULP, CMP_EDGES))})


MAX_EDGES = [0.0, ULP, -ULP, MAX_LIMIT - ULP, -(MAX_LIMIT - ULP)]


def _reduce_args(draw):
    shape = draw(shapes(1, 3, 5))
    x = reals(draw, shape, -(MAX_LIMIT - ULP), MAX_LIMIT - ULP, MAX_EDGES)
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    return x, {"dim": dim, "keepdim": draw(st.booleans())}


def case_amax(draw):
    x, attrs = _reduce_args(draw)
    return Case({"self": Arg(x)}, attrs)


def _argmax_check(got, want, case):
    """Any index of a maximum is right (the tournament need not pick torch's first one)."""
    x, dim, keepdim = case.args["self"].value, case.attrs["dim"], case.attrs["keepdim"]
    index = got if keepdim else got.unsqueeze(dim)
    assert ((index >= 0) & (index < x.shape[dim])).all(), f"mpc.argmax: index out of range: {got}"
    picked = x.gather(dim, index)
    assert torch.equal(picked, x.amax(dim, keepdim=True)), f"mpc.argmax: {got} does not index a max of {x}"


def case_argmax(draw):
    x, attrs = _reduce_args(draw)
    return Case({"self": Arg(x)}, attrs, check=_argmax_check)


def case_exp(draw):
    """e^x for x <= 0, absolute error < 1e-5; inputs below -15 count as -15. The
    comparison inside is on x + 14.5, so x > -(2^15 - 15)."""
    low = -(CMP_LIMIT - 16)
    edges = [0.0, -ULP, -0.5, -1.0, -14.5, -15 + ULP, -15.0, -15 - ULP, -15.5, -16.0, -1000.0, low]
    return Case({"self": Arg(with_edges(draw, low, 0.0, edges))}, atol=EXP_ATOL)


def case_reciprocal(draw):
    """1/x on [1, 4096) (the registry's domain): absolute error "a few 2^-16" (here 4)."""
    high = 4096 - ULP
    edges = [1.0, 1 + ULP, 2 - ULP, 2.0, 3.0, 1000.0, 2048 - ULP, 2048.0, high]
    return Case({"self": Arg(with_edges(draw, 1.0, high, edges))}, atol=4 * ULP)


def case_rsqrt(draw):
    """1/sqrt(x) on [4^-8, 4^11) = [2^-16, 4.2e6), relative error ~1e-4 (here: 2e-4, plus 2 ulps)."""
    high = 4.0 ** 11 - ULP
    edges = [ULP, 2 * ULP, 3 * ULP, 1e-3, 0.25, 1.0, 1 - ULP, 4.0, 1e6, high]
    return Case({"self": Arg(with_edges(draw, ULP, high, edges))}, atol=2 * ULP, rtol=2e-4)


def case_softmax(draw):
    """Exact softmax along ``dim``; scores within +-16384; absolute error ~1e-4 (here 2e-4)."""
    shape = draw(shapes(1, 3, 6))
    limit = MAX_LIMIT - ULP
    x = reals(draw, shape, -limit, limit, [0.0, ULP, limit, -limit, 20.0, -20.0])
    return Case({"self": Arg(x)}, {"dim": draw(st.integers(-len(shape), len(shape) - 1))}, atol=2e-4)


def case_softmax_masked(draw):
    """Exact softmax of x + a public mask over the last axis: the mask's -inf and finfo.min
    entries are excluded (each row keeps its first entry), its finite entries added."""
    shape = draw(shapes(1, 3, 6))
    x = reals(draw, shape, -100.0, 100.0, [0.0, ULP, 20.0, -20.0])
    kinds = torch.tensor(draw(st.lists(st.sampled_from([0, 1, 2, 3]), min_size=x.numel(), max_size=x.numel())))
    table = torch.tensor([0.0, -torch.inf, torch.finfo(torch.float32).min, 3.0], dtype=torch.float64)
    mask = table[kinds].reshape(shape)
    mask[..., 0] = 0.0
    return Case({"self": Arg(x), "mask": Arg(mask, "public", "const")}, {"dim": -1, "softmax": "exact"}, atol=2e-4)


def case_softmax_2quad(draw):
    """MPCFormer's 2Quad along ``dim``: rows whose sum of (x + 5)^2 lies in the
    division's [2^-8, 2^16) (x in [-4, 60], at most 6 per row); absolute error ~1e-4 (here 2e-4)."""
    shape = draw(shapes(1, 3, 6))
    x = reals(draw, shape, -4.0, 60.0, [0.0, ULP, -4.0, 60.0, 20.0])
    return Case({"self": Arg(x)}, {"dim": draw(st.integers(-len(shape), len(shape) - 1))}, atol=2e-4)


def case_softmax_2quad_goldschmidt(draw):
    """SecFormer's 2Quad with 7 Goldschmidt steps: as 2Quad (each step adds about an ulp)."""
    case = case_softmax_2quad(draw)
    return Case(case.args, case.attrs, atol=4e-4)


def _gelu_secformer_check(got, want, case):
    """Within 0.5 of the segment edges +-2.5 sqrt 2 the fuzzy segment test may take the
    series (within 0.03 of +-1 there: 0.03 |x| / 2); elsewhere a few ulps of the
    truncations and the dealt sines (2e-4 for |x| < 1e3)."""
    x = case.args["self"].value
    band = (x.abs() - ERF_EDGE * math.sqrt(2)).abs() <= 0.5
    bound = torch.where(band, 0.03 * x.abs() / 2 + 1e-3, 2e-4 + x.abs() * 2e-6)
    assert_close("mpc.gelu_secformer", got, want, bound, 0.0, case)


def case_gelu_secformer(draw):
    edges = [0.0, ULP, -ULP, 3.5355, -3.5355, 3.0, -3.0, 4.1, -4.1, 20.0, -20.0, 1000.0, -1000.0]
    return Case({"self": Arg(with_edges(draw, -1000.0, 1000.0, edges))}, check=_gelu_secformer_check)


def _gelu_puma_check(got, want, case):
    """The pieces meet with jumps up to 0.03 (at 3): within an ulp of an edge the encoded
    x may fall on the other side; elsewhere the truncations and the f + 8 bit coefficients."""
    x = case.args["self"].value
    near = torch.zeros_like(x, dtype=torch.bool)
    for edge in (-4.0, -1.95, 3.0):
        near |= (x - edge).abs() <= 2 * ULP
    assert_close("mpc.gelu_puma", got, want, torch.where(near, 0.05, 1e-4), 0.0, case)


def case_gelu_puma(draw):
    edges = [0.0, ULP, -4.0, -1.95, 3.0, -4 - ULP, 3 + ULP, 2.9, -3.9, 20.0, -20.0, CMP_LIMIT - 5, -(CMP_LIMIT - 5)]
    return Case({"self": Arg(with_edges(draw, -(CMP_LIMIT - 5), CMP_LIMIT - 5, edges))}, check=_gelu_puma_check)


def case_softmax_puma(draw):
    """PUMA's softmax: the exact softmax's domain; its 8 squarings carry f + 8 bits, so
    their doublings of a relative error stay near the exact softmax's ~1e-4 (here 2e-4)."""
    case = case_softmax(draw)
    return Case(case.args, case.attrs, atol=2e-4)


def case_layer_norm_goldschmidt(draw):
    """LayerNorm with SecFormer's 7 Goldschmidt steps: LayerNorm's bound."""
    return case_layer_norm(draw)


def case_gelu_quad(draw):
    """0.125 x^2 + 0.25 x + 0.5, one truncation of x^2 + 2x (|x| < 32768)."""
    x = reals(draw, draw(shapes()), -3000, 3000, [0.0, ULP, -ULP, 1.0, -2.0])
    return Case({"self": Arg(x)}, atol=TRUNC_ULPS)


SEGMENT_EDGES = [0.0, ULP, -ULP, 4.0, -4.0, 3.5, -3.5, 4.5, -4.5, 4 - ULP, -4 + ULP, 20.0, -20.0,
                 CMP_LIMIT - 5, -(CMP_LIMIT - 5)]


def case_gelu(draw):
    """Within 1e-3 of either form on all reals in range (the segment tests compare x +- 4)."""
    x = with_edges(draw, -(CMP_LIMIT - 5), CMP_LIMIT - 5, SEGMENT_EDGES)
    return Case({"self": Arg(x)}, {"approximate": draw(st.sampled_from(["none", "tanh"]))}, atol=1e-3)


def case_tanh(draw):
    return Case({"self": Arg(with_edges(draw, -(CMP_LIMIT - 5), CMP_LIMIT - 5, SEGMENT_EDGES))}, atol=3e-3)


SILU_EDGES = [0.0, ULP, -ULP, 12.0, -12.0, 11.5, -11.5, 12.5, -12.5, 12 - ULP, -12 + ULP, 4.0, -4.0, 40.0, -40.0,
              CMP_LIMIT - 13, -(CMP_LIMIT - 13)]


def case_silu(draw):
    """Within SILU_MAX_ERROR (5e-4) on all reals in range (the segment tests compare x +- 12)."""
    x = with_edges(draw, -(CMP_LIMIT - 13), CMP_LIMIT - 13, SILU_EDGES)
    return Case({"self": Arg(x)}, atol=nl.SILU_MAX_ERROR)


def _layer_norm_check(got, want, case):
    """No bound is documented; this one follows from the steps. The centered value is off by
    dc (the mean: 2 ulps and the 24-bit 1/n), the variance by dv (the squares' truncations
    average to 2 ulps, the scaling 2 more, plus 2 sigma dc); rsqrt adds 1e-4 relative (here
    2e-4); so y = (x - mean) / sigma is off by |y| (2e-4 + dv / 2 sigma^2) + dc / sigma, plus
    the products' truncations; then times |gamma|. (x - mean) gamma itself is truncated to f
    bits before the division by sigma: 2 ulps / sigma however small gamma is (found by the
    thorough profile: gamma 0.002, sigma 0.02)."""
    x = case.args["input"].value
    n = x.shape[-1]
    variance = x.var(-1, unbiased=False, keepdim=True)
    sigma2 = variance + case.attrs["eps"]
    y = (x - x.mean(-1, keepdim=True)) / sigma2.sqrt()
    dc = 4 * ULP + x.abs().amax(-1, keepdim=True) * 2.0 ** -24
    dv = 4 * ULP + 2 * variance.sqrt() * dc + variance * 2.0 ** -23
    gamma = case.args["weight"].value.abs() if "weight" in case.args else torch.ones(n, dtype=torch.float64)
    bound = gamma * (y.abs() * (2e-4 + dv / (2 * sigma2)) + dc / sigma2.sqrt() + 4 * ULP) + 4 * ULP \
        + 2 * ULP / sigma2.sqrt()
    assert_close("mpc.layer_norm", got, want, bound, 0.0, case)


def layer_norm_case(draw, spreads, epsilons):
    """Rows of 2..8 whose first and last entries are +-spread (variance >= spread^2 / n),
    with gamma and beta each present or not."""
    rows, n = draw(shapes(1, 2, 3)), draw(st.integers(2, 8))
    spread = draw(st.sampled_from(spreads))
    x = reals(draw, (*rows, n), -spread, spread, [0.0, spread, -spread])
    x[..., 0], x[..., -1] = spread, -spread
    args, attrs = {"input": Arg(x)}, {"normalized_shape": [n], "eps": draw(st.sampled_from(epsilons))}
    for key, values in (("weight", (-2.0, 2.0)), ("bias", (-5.0, 5.0))):
        if draw(st.booleans()):
            value = reals(draw, (n,), *values, [0.0, 1.0])
            args[key] = weight_arg(value) if key == "weight" else server_arg(draw, value)
        else:
            attrs[key] = None
    return Case(args, attrs, check=_layer_norm_check)


def _rms_norm_check(got, want, case):
    """LayerNorm's bound with no mean: the mean square is off by dv (truncations, scaling),
    rsqrt adds 2e-4 relative, x gamma is truncated to f bits before the division."""
    x = case.args["input"].value
    n = x.shape[-1]
    r2 = x.square().mean(-1, keepdim=True) + case.attrs["eps"]
    y = x / r2.sqrt()
    dv = 4 * ULP + r2 * 2.0 ** -23
    gamma = case.args["weight"].value.abs() if "weight" in case.args else torch.ones(n, dtype=torch.float64)
    bound = gamma * (y.abs() * (2e-4 + dv / (2 * r2)) + 4 * ULP) + 4 * ULP + 2 * ULP / r2.sqrt()
    assert_close("mpc.rms_norm", got, want, bound, 0.0, case)


def case_rms_norm(draw):
    """Rows of 2..8 whose first entry is +-spread (mean square >= spread^2 / n), gamma present or not."""
    rows, n = draw(shapes(1, 2, 3)), draw(st.integers(2, 8))
    spread = draw(st.sampled_from([0.05, 1.0, 100.0, 1000.0]))
    x = reals(draw, (*rows, n), -spread, spread, [0.0, spread, -spread])
    x[..., 0] = spread * (1 if draw(st.booleans()) else -1)
    args, attrs = {"input": Arg(x)}, {"normalized_shape": [n], "eps": draw(st.sampled_from([1e-6, 1e-5, 1e-3]))}
    if draw(st.booleans()):
        args["weight"] = weight_arg(reals(draw, (n,), -2.0, 2.0, [0.0, 1.0]))
    else:
        attrs["weight"] = None
    return Case(args, attrs, check=_rms_norm_check)


def case_layer_norm(draw):
    """rsqrt's domain bounds the variance: var + eps in [4^-8, 4^11)."""
    return layer_norm_case(draw, [0.05, 1.0, 100.0, 1000.0], [1e-5, 1e-3, 1e-12])


def _sdpa_check(got, want, case):
    """No bound is documented; softmax's 1e-4 (here 2e-4) per probability times sum |v|, plus
    the score error (a few ulps, scaled) through the softmax, plus the matmuls' truncations."""
    v = case.args["value"].value
    n = v.shape[-2]
    bound = (2e-4 * n + 16 * ULP) * v.abs().amax((-1, -2), keepdim=True) + n * TRUNC_ULPS
    assert_close("mpc.sdpa", got, want, bound, 0.0, case)


def case_sdpa(draw):
    """Either softmax variant; for 2Quad, scores in [-4, 4] keep each row's sum of
    (x + 5)^2 at least 1, inside the division's domain."""
    batch = draw(shapes(1, 2, 2))
    s_q, s_k, d = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    softmax = draw(st.sampled_from(["exact", "2quad", "2quad_goldschmidt", "puma"]))
    limit = 0.5 if softmax.startswith("2quad") else 4.0
    q = Arg(reals(draw, (*batch, s_q, d), -limit, limit, [0.0, ULP]))
    k = Arg(reals(draw, (*batch, s_k, d), -limit, limit, [0.0, -ULP]))
    v = Arg(reals(draw, (*batch, s_k, d), -10, 10, [0.0, ULP]))
    args = {"query": q, "key": k, "value": v}
    attrs = {"dropout_p": 0.0, "enable_gqa": False, "is_causal": draw(st.booleans()) and s_q == s_k,
             "scale": draw(st.one_of(st.none(), st.sampled_from([0.125, 1.0, 2.0, 0.3]))), "softmax": softmax}
    mask_kind = draw(st.sampled_from(["none", "bool", "additive"]))
    if mask_kind == "none" or attrs["is_causal"]:   # torch refuses a mask together with is_causal
        attrs["attn_mask"] = None
    else:
        keep = bools(draw, (s_q, s_k))
        keep[:, 0] = True    # every row keeps a position (column 0 also survives a causal mask)
        if mask_kind == "bool":
            mask = keep
        else:   # HF style: a huge negative where masked, plus (here) a small finite bias elsewhere
            bias = reals(draw, (s_q, s_k), -2, 2, [0.0])
            mask = torch.where(keep, bias, torch.tensor(draw(st.sampled_from([-math.inf, torch.finfo(torch.float32).min,
                                                                              -1e9])), dtype=torch.float64))
        args["attn_mask"] = public_arg(draw, mask)
    return Case(args, attrs, check=_sdpa_check)


def case_mul_scalar(draw):
    """x * c with c encoded with 24 fractional bits: 2 ulps and |x| 2^-25."""
    x = reals(draw, draw(shapes()), -1e4, 1e4, [0.0, ULP, -ULP, 1e4])
    value = draw(st.one_of(st.sampled_from([1 / 3, 1 / 768, -0.37, 1.0, 0.0, 1 / 8]), st.floats(-100, 100)))
    return Case({"self": Arg(x)}, {"value": value}, atol=TRUNC_ULPS + x.abs() * 2.0 ** -25)


def case_softmax_power(draw):   # the power preset's (ops/power.py)
    """Rows of at most 6 entries along ``dim``; p = 2 or 4 on [-20, 20], 6 or 8 on [-6, 6]:
    every row's sum stays inside the division's [1/2, 2^12). Bound: 1e-4 absolute (the
    last step's 6.2e-5 relative and three truncations)."""
    shape = draw(shapes(1, 3, 6))
    p = draw(st.sampled_from([2, 4, 4, 6, 8]))
    limit = 20.0 if p <= 4 else 6.0
    x = reals(draw, shape, -limit, limit, [0.0, ULP, -ULP, limit, -limit, 1.0])
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    sums = power.power_row_sums(x.movedim(dim, -1), None, p)[1]
    assert float(sums.max()) < 2.0 ** power.POWER_SUM_LOG2, "the case left the division's domain"
    return Case({"self": Arg(x)}, {"dim": dim, "p": p}, atol=1e-4)


def _gelu_check(got, want, case):
    """(beta + 2q) 1.5 2^-f from q's truncation (within 1.5 ulp), and two ulps of the final one."""
    x = case.args["self"].value
    q = power.GELU_QUARTIC["alpha"] * x * x
    assert_close("mpc.gelu_quartic", got, want, (1.5 * (power.GELU_QUARTIC["beta"] + 2 * q) + 3) * ULP, 0.0, case)


def case_gelu_quartic(draw):
    bound = math.floor(power.gelu_quartic_bound(16)) - 1.0
    edges = [0.0, ULP, -ULP, 4.0, -4.0, 8.0, -8.0, bound, -bound]
    return Case({"self": Arg(with_edges(draw, -bound, bound, edges))}, check=_gelu_check)


def case_layer_norm_newton(draw):
    """The power preset's LayerNorm: var + eps in [2^-11, 2^8)."""
    return layer_norm_case(draw, [0.1, 1.0, 10.0, 15.0], [1e-5, 1e-12])


CASES: dict[str, Callable] = {
    "mpc.share": case_share, "mpc.reveal": case_reveal, "mpc.add": case_add, "mpc.sub": case_sub,
    "mpc.neg": case_neg, "mpc.add_public": case_add_public, "mpc.mul_public": case_mul_public, "mpc.mul": case_mul,
    "mpc.square": case_square, "mpc.matmul": case_matmul, "mpc.linear_server": case_linear_server,
    "mpc.lookup_server": case_lookup_server,
    "mpc.mul_server": case_mul_server, "mpc.trunc": case_trunc, "mpc.masked_fill_public": case_masked_fill_public,
    "mpc.where_public": case_where_public, "mpc.ltz": case_ltz, "mpc.relu": case_relu, "mpc.where": case_where,
    "mpc.amax": case_amax, "mpc.argmax": case_argmax, "mpc.exp": case_exp, "mpc.reciprocal": case_reciprocal,
    "mpc.rsqrt": case_rsqrt, "mpc.softmax": case_softmax, "mpc.softmax_masked": case_softmax_masked, "mpc.gelu": case_gelu, "mpc.tanh": case_tanh,
    "mpc.silu": case_silu,
    "mpc.layer_norm": case_layer_norm, "mpc.rms_norm": case_rms_norm, "mpc.sdpa": case_sdpa, "mpc.mul_scalar": case_mul_scalar,
    "mpc.softmax_2quad": case_softmax_2quad, "mpc.gelu_quad": case_gelu_quad,
    "mpc.softmax_2quad_goldschmidt": case_softmax_2quad_goldschmidt, "mpc.gelu_secformer": case_gelu_secformer,
    "mpc.layer_norm_goldschmidt": case_layer_norm_goldschmidt,
    "mpc.gelu_puma": case_gelu_puma, "mpc.softmax_puma": case_softmax_puma,
    "mpc.softmax_power": case_softmax_power, "mpc.gelu_quartic": case_gelu_quartic,
    "mpc.layer_norm_newton": case_layer_norm_newton,
}
# one-op plans of 13 (power softmax) to 21 rounds (its LayerNorm): half the profile's examples
SLOW_OPS = {"mpc.softmax_power", "mpc.layer_norm_newton"}


def examples_per_op() -> int:
    """The profile's count (ci: 25) for each op: a one-op plan runs in about 10 ms."""
    return settings.default.max_examples


def check_op(op_name: str, **overrides):
    """Hypothesis over ``op_name``'s case builder; raises AssertionError on the first mismatch."""
    builder = CASES[op_name]
    examples = max(5, examples_per_op() // 2) if op_name in SLOW_OPS else examples_per_op()
    options = dict(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    options.update(overrides)

    @settings(**options)
    @given(st.data(), st.integers(0, 2**31))
    def run(data, seed):
        check_case(op_name, builder(data.draw), seed)
    run()


# ----------------------------------------------------------------------------- the tests
def test_cases_cover_the_registry():
    assert set(CASES) == set(MPC_OPS), (f"ops without a case: {sorted(set(MPC_OPS) - set(CASES))}; "
                                        f"cases without an op: {sorted(set(CASES) - set(MPC_OPS))}")
    for name in MPC_OPS:
        op = REGISTRY[name]
        assert op.protocol is not None and op.reference is not None, f"{name} lacks a protocol or a reference"


@pytest.mark.parametrize("op_name", MPC_OPS)
def test_op_protocol_matches_reference(op_name):
    if op_name not in CASES:
        pytest.fail(f"{op_name} is in the registry but has no case in tests/test_op_registry.py CASES")
    check_op(op_name)


# ----------------------------------------------------------------------------- planted defects: the tests have teeth
def _replace_protocol(monkeypatch, name, protocol):
    monkeypatch.setitem(REGISTRY, name, dataclasses.replace(REGISTRY[name], protocol=protocol))


def _mul_server_untruncated(ctx, x, other):
    w_ring = arith.server_ring(ctx, "other", other)
    return arith.linear_server(ctx, x, w_ring, ctx.operand_types["other"].shape, ctx.operand_names["other"], torch.mul)


def _mul_public_untruncated(ctx, x, v, truncate=True):
    ring = arith.encode(ctx, torch.as_tensor(v, dtype=torch.float64), "real" if truncate else "int")
    return arith.mul_public(ctx, x, ring, False)


PLANTED = {   # defect -> (op whose test must fail, the protocol that replaces the right one, what the failure says)
    "sub_adds": ("mpc.sub", lambda ctx, x, y: share_of(ctx, x) + share_of(ctx, y), "differs"),   # x, y: wires too
    "where_public_ignores_condition": ("mpc.where_public", lambda ctx, c, x, y: x + 0 * y, "differs"),
    "masked_fill_ignores_mask": ("mpc.masked_fill_public", lambda ctx, x, mask, value: x, "differs"),
    "amax_drops_keepdim": ("mpc.amax", lambda ctx, x, dim, keepdim=False:
                           compare._along(compare.max_last, dim, False)(ctx, x), "shape"),
    "argmax_drops_keepdim": ("mpc.argmax", lambda ctx, x, dim, keepdim=False:
                             compare._along(compare.argmax_last, dim, False)(ctx, x), "shape"),
    "mul_server_skips_trunc": ("mpc.mul_server", _mul_server_untruncated, "differs"),
    "mul_public_skips_trunc": ("mpc.mul_public", _mul_public_untruncated, "differs"),
}

# a fixed, generate-only search: the planted runs are deterministic and never shrink
PLANTED_SEARCH = dict(max_examples=12, derandomize=True, database=None, phases=[Phase.generate])


def apply_planted(monkeypatch, defect: str) -> str:
    name, protocol, _ = PLANTED[defect]
    _replace_protocol(monkeypatch, name, protocol)
    return name


@pytest.mark.parametrize("defect", sorted(PLANTED))
def test_planted_defect_fails_the_op_test(monkeypatch, defect):
    name = apply_planted(monkeypatch, defect)
    with pytest.raises(AssertionError, match=PLANTED[defect][2]):
        check_op(name, **PLANTED_SEARCH)


# ----------------------------------------------------------------------------- found by these tests, since fixed
def test_exp_documented_bound():
    x = grid(torch.linspace(-1, 0, 2000, dtype=torch.float64))
    check_case("mpc.exp", Case({"self": Arg(x)}, atol=1.7 * 2.0 ** -16))   # the docstring's bound


def test_reveal_of_a_shared_bool_gives_bools():
    got, want = run_case("mpc.share", Case({"self": Arg(torch.tensor([True, False, True]), "client")}))
    assert got.dtype == torch.bool, f"revealed bools came back as {got.dtype}"


def test_a_table_beyond_the_lookup_ring_is_refused_by_name():
    """The lookup forms a row of the table in an (f + 16)-bit ring: a table with an entry
    of 2^14 or more is refused before anything is shared, naming the weight and the op."""
    import mpcc
    from mpcc.runtime.session import RunError

    class Lookup(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(10, 4)

        def forward(self, ids):
            return self.table(ids)
    model = Lookup()
    ids = torch.tensor([[1, 2, 3]])
    plan = mpcc.compile(model, (ids,))
    assert any(n.op == "mpc.lookup_server" for n in plan.graph.nodes)
    weights = {"table.weight": model.table.weight.detach().clone()}
    weights["table.weight"][7, 2] = 2.0 ** 14
    with pytest.raises(RunError, match=r"'table.weight' has max \|value\| 1.638e\+04, .*mpc.lookup_server"):
        mpcc.Session(plan, weights)
    weights["table.weight"][7, 2] = 2.0 ** 14 - 1
    out, _ = mpcc.run(plan, {"ids": ids}, weights, progress=False)
    assert (out[0] - weights["table.weight"][ids].double()).abs().max() <= 2.0 ** -17   # the rows, encoded


def test_a_table_computed_from_a_weight_is_no_lookup():
    """The lookup's table bound is checked on the weight itself, so only a param table takes
    the narrow ring; a computed one (here scaled) stays a 64-bit server linear (found in review)."""
    import mpcc

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(10, 4)

        def forward(self, ids):
            return torch.nn.functional.embedding(ids, self.table.weight * 3000.0)
    model = Scaled()
    ids = torch.tensor([[1, 2, 3]])
    plan = mpcc.compile(model, (ids,))
    assert not any(n.op == "mpc.lookup_server" for n in plan.graph.nodes)
    out, _ = mpcc.run(plan, (ids,), model.state_dict(), progress=False)
    assert (out[0] - model(ids).double()).abs().max() < 1e-3
