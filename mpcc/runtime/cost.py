"""The cost model: rounds, bytes and dealer material of a plan, obtained by
running its protocols on shapes in a ``CostContext`` for each party."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..backends import CpuRing
from ..ops import get_op
from .executor import OVERFLOW_NODE, execute
from .shape_context import CostContext, OpCost

__all__ = ["PlanCost", "plan_cost", "op_cost", "NETWORKS", "op_family"]

# name -> (one-way latency in seconds, bandwidth in bytes per second)
NETWORKS = {"lan": (0.0002, 1.25e9), "wan": (0.04, 12.5e6), "local": (0.0, float("inf"))}


def op_family(op_name: str) -> str:
    """Report bucket for an op: the MPC op's name, or its family for plaintext ops."""
    if op_name.startswith("mpc."):
        return op_name[4:]
    return get_op(op_name).family


@dataclass
class PlanCost:
    per_party: tuple[OpCost, OpCost]
    by_node: tuple[dict, dict]
    materials: list = field(default_factory=list)
    node_ops: dict = field(default_factory=dict)
    scheduled_rounds: int | None = None   # the critical path: what a run takes (None: not scheduled)
    schedule: dict = field(default_factory=dict)   # node -> (steps done when it starts, when it is done)

    @property
    def rounds(self) -> int:
        """Communication steps of a run: the longest chain of dependent openings,
        all openings of one step merged into one message each way."""
        return self.sequential_rounds if self.scheduled_rounds is None else self.scheduled_rounds

    @property
    def sequential_rounds(self) -> int:
        """What the run would take with every node's messages sent on their own."""
        return max(p.rounds for p in self.per_party)

    @property
    def online_bytes(self) -> int:
        return sum(p.online_bytes for p in self.per_party)

    @property
    def offline_bytes(self) -> int:
        return sum(p.offline_bytes for p in self.per_party)

    @property
    def setup_bytes(self) -> int:
        return sum(p.setup_bytes for p in self.per_party)

    def estimate_seconds(self, network: str = "lan") -> float:
        latency, bandwidth = NETWORKS[network]
        return self.rounds * latency + max(p.online_bytes for p in self.per_party) / bandwidth

    def by_family(self) -> dict[str, dict[str, int]]:
        families: dict[str, dict[str, int]] = {}
        for party in (0, 1):
            for node, cost in self.by_node[party].items():
                entry = families.setdefault(op_family(self.node_ops[node]), {"rounds": 0, "online_bytes": 0,
                                                                             "offline_bytes": 0})
                entry["online_bytes"] += cost.online_bytes
                entry["offline_bytes"] += cost.offline_bytes
                if party == 0:
                    entry["rounds"] += cost.rounds
        return families

    def summary(self, network: str = "lan") -> str:
        lines = [f"rounds {self.rounds} (node by node: {self.sequential_rounds}), online {self.online_bytes / 1e6:.2f} MB "
                 f"(client {self.per_party[0].online_bytes / 1e6:.2f}, server {self.per_party[1].online_bytes / 1e6:.2f}), "
                 f"offline {self.offline_bytes / 1e6:.2f} MB, setup {self.setup_bytes / 1e6:.2f} MB once, "
                 f"estimated {self.estimate_seconds(network):.3f} s on {network} (communication only)"]
        for family, entry in sorted(self.by_family().items(), key=lambda kv: -kv[1]["online_bytes"]):
            lines.append(f"  {family:14} rounds {entry['rounds']:5}  online {entry['online_bytes'] / 1e6:9.3f} MB  "
                         f"offline {entry['offline_bytes'] / 1e6:9.3f} MB")
        return "\n".join(lines)


def plan_cost(plan) -> PlanCost:
    contexts = []
    with torch.no_grad():
        for party in (0, 1):
            ctx = CostContext(party, CpuRing(), plan.frac_bits)
            execute(plan.graph, ctx, overflow_check=plan.overflow_check)
            contexts.append(ctx)
    rounds = {ctx.schedule["rounds"] for ctx in contexts}
    if len(rounds) != 1:
        raise RuntimeError(f"the two parties' schedules differ: {sorted(rounds)} steps")
    totals = []
    for ctx in contexts:
        total = OpCost()
        for cost in ctx.by_node.values():
            total.add(cost)
        totals.append(total)
    node_ops = {n.name: n.op for n in plan.graph.nodes}
    node_ops[OVERFLOW_NODE] = "mpc." + OVERFLOW_NODE
    timing = contexts[0].schedule
    schedule = {name: (timing["start"][name], finish) for name, finish in timing["finish"].items()}
    return PlanCost(tuple(totals), (contexts[0].by_node, contexts[1].by_node), contexts[0].materials, node_ops,
                    rounds.pop(), schedule)


def op_cost(op_name: str, operands: dict, attrs: dict | None = None, out_shape=None, frac_bits: int = 16) -> PlanCost:
    """The cost and dealer material of one MPC op, from operand types alone.

    Args:
        op_name: e.g. ``"mpc.mul"``.
        operands: param name -> ``TensorType`` (visibility ``shared`` for secret
            shares, ``server``/``client``/``public`` for plaintext operands).
        attrs: the op's attributes.
        out_shape: the result shape (default: the first operand's).

    Example:
        >>> from mpcc.ir import TensorType
        >>> cost = op_cost("mpc.mul", {"self": TensorType((4, 4), "real", "shared"),
        ...                            "other": TensorType((4, 4), "real", "shared")}, {"truncate": True})
        >>> cost.rounds, cost.per_party[0].online_bytes
        (2, 384)
    """
    from ..ir import Graph, Node, TensorType
    from ..plan import Plan
    nodes, names = [], []
    for param, tensor_type in operands.items():
        owner = "client" if tensor_type.vis in ("shared", "public") else tensor_type.vis
        nodes.append(Node(f"in_{param}", "input", (), {"owner": owner},
                          TensorType(tensor_type.shape, tensor_type.kind, owner)))
        name = f"in_{param}"
        if tensor_type.vis == "shared":
            nodes.append(Node(f"sh_{param}", "mpc.share", (name,), {}, tensor_type))
            name = f"sh_{param}"
        names.append(name)
    first = next(iter(operands.values()))
    out = TensorType(tuple(out_shape or first.shape), first.kind, "shared")
    nodes.append(Node("op", op_name, tuple(names), dict(attrs or {}), out))
    return plan_cost(Plan(Graph(tuple(nodes), ("op",)), frac_bits=frac_bits))
