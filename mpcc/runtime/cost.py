"""The cost model: rounds, bytes and dealer material of a plan, obtained by
running its protocols on shapes in a ``CostContext`` for each party, and a
wall-time estimate on a network profile (see docs/cost.md)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..backends import CpuRing
from ..ops import get_op
from .cost_report import format_summary, plot_cost
from .executor import OVERFLOW_NODE, execute
from .networks import NETWORKS, Network, parse_network
from .shape_context import CostContext, OpCost

__all__ = ["PlanCost", "CostRow", "ComputeModel", "COMPUTE", "plan_cost", "op_cost", "NETWORKS", "Network",
           "parse_network", "op_family", "layer_of"]


@dataclass(frozen=True)
class ComputeModel:
    """Local compute of a run, both parties and the dealer on one machine: a
    cost per communication step (the executor's step, thread hand-offs) and
    per byte of online messages and dealer material (the ring work of every
    protocol is linear in what it sends and consumes)."""
    seconds_per_round: float
    seconds_per_byte: float

    def seconds(self, rounds: int, data_bytes: int) -> float:
        return rounds * self.seconds_per_round + data_bytes * self.seconds_per_byte


# Least-squares fit (relative error) of `mpcc.run`'s online phase, cpu backend, material dealt beside
# it, on tiny-bert, one BERT-base layer and the whole BERT-base at several lengths, measured in two
# sessions: every point within 32%, the whole BERT-base within 16% (docs/cost.md has the table).
COMPUTE = ComputeModel(seconds_per_round=0.46e-3, seconds_per_byte=1.29e-9)


def op_family(op_name: str) -> str:
    """Report bucket for an op: the MPC op's name, or its family for plaintext ops."""
    if op_name.startswith("mpc."):
        return op_name[4:]
    return get_op(op_name).family


def layer_of(origin: str) -> str:
    """The layer a module path belongs to: up to its first index
    (``encoder.layer.3.attention.self`` -> ``encoder.layer.3``), else its first
    name (``embeddings.LayerNorm`` -> ``embeddings``); ``<top>`` for the model's own body."""
    parts = origin.split(".") if origin else []
    for index, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:index + 1])
    return parts[0] if parts else "<top>"


@dataclass
class CostRow:
    """One group of nodes in a breakdown. The rows of a breakdown sum to the
    plan's totals: ``rounds`` to the scheduled rounds, ``node_rounds`` to the
    node-by-node ones."""
    rounds: int = 0          # steps of the critical path spent in these nodes
    node_rounds: int = 0     # the nodes' own steps, summed
    client_bytes: int = 0    # online, client -> server
    server_bytes: int = 0    # online, server -> client
    offline_bytes: int = 0
    setup_bytes: int = 0

    @property
    def online_bytes(self) -> int:
        return self.client_bytes + self.server_bytes


# breakdown key -> node's group; a missing key is a ValueError naming the valid ones
GROUPINGS = {
    "family": lambda cost, node: op_family(cost.node_ops[node]),
    "layer": lambda cost, node: layer_of(cost.node_origins.get(node, "")),
}


@dataclass
class PlanCost:
    per_party: tuple[OpCost, OpCost]
    by_node: tuple[dict, dict]
    materials: list = field(default_factory=list)
    node_ops: dict = field(default_factory=dict)   # node -> op, in graph order
    scheduled_rounds: int | None = None   # the critical path: what a run takes (None: not scheduled)
    schedule: dict = field(default_factory=dict)   # node -> (steps done when it starts, when it is done)
    node_origins: dict = field(default_factory=dict)   # node -> module path it came from
    critical_path: dict = field(default_factory=dict)  # node -> its steps on one longest chain of openings
    network: Network = NETWORKS["lan"]   # what estimate_seconds and summary assume by default

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

    @property
    def compute_seconds(self) -> float:
        """Local compute of one run by ``COMPUTE``: a rough figure (within about
        30% on the machine it was fitted on; other machines and backends differ)."""
        return COMPUTE.seconds(self.rounds, self.online_bytes + self.offline_bytes)

    def with_network(self, network: str | Network) -> "PlanCost":
        """The same counts, estimated on another profile."""
        return replace(self, network=parse_network(network))

    def latency_seconds(self, network: str | Network | None = None) -> float:
        """Rounds times one one-way latency."""
        return self.rounds * self._network(network).latency_s

    def bandwidth_seconds(self, network: str | Network | None = None) -> float:
        """The busier party's online bytes at the link's bandwidth."""
        return max(p.online_bytes for p in self.per_party) / self._network(network).bytes_per_second

    def estimate_seconds(self, network: str | Network | None = None) -> float:
        """Wall time of one run: rounds x latency + the busier party's online
        bytes / bandwidth + ``compute_seconds``."""
        return self.latency_seconds(network) + self.bandwidth_seconds(network) + self.compute_seconds

    def breakdown(self, *keys: str) -> dict:
        """Group -> ``CostRow`` for the groups named by ``keys`` (``"layer"``,
        ``"family"``; two keys give (layer, family) pairs), in graph order."""
        unknown = [key for key in keys if key not in GROUPINGS]
        if unknown or not keys:
            raise ValueError(f"unknown breakdown {unknown or list(keys)}: use {', '.join(GROUPINGS)}")
        costed = set(self.by_node[0]) | set(self.by_node[1]) | set(self.critical_path)
        rows: dict = {}
        for node in self.node_ops:
            if node not in costed:
                continue
            group = tuple(GROUPINGS[key](self, node) for key in keys)
            row = rows.setdefault(group if len(keys) > 1 else group[0], CostRow())
            client, server = (self.by_node[party].get(node, OpCost()) for party in (0, 1))
            row.rounds += self.critical_path.get(node, 0)
            row.node_rounds += client.rounds
            row.client_bytes += client.online_bytes
            row.server_bytes += server.online_bytes
            row.offline_bytes += client.offline_bytes + server.offline_bytes
            row.setup_bytes += client.setup_bytes + server.setup_bytes
        return rows

    def by_family(self) -> dict[str, CostRow]:
        return self.breakdown("family")

    def by_layer(self) -> dict[str, CostRow]:
        return self.breakdown("layer")

    def summary(self, network: str | Network | None = None) -> str:
        """Totals, the estimate on the profile and the tables by layer and by op family."""
        return format_summary(self if network is None else self.with_network(network))

    def plot(self, path) -> None:
        """Where rounds and bytes go, by layer and op family, as a PNG (needs matplotlib)."""
        plot_cost(self, path)

    def _network(self, network) -> Network:
        return self.network if network is None else parse_network(network)


def plan_cost(plan, network: str | Network = "lan") -> PlanCost:
    network = parse_network(network)   # a bad profile fails before the shape run
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
    origins = {n.name: n.origin for n in plan.graph.nodes}
    origins[OVERFLOW_NODE] = "<overflow check>"
    timing = contexts[0].schedule
    schedule = {name: (timing["start"][name], finish) for name, finish in timing["finish"].items()}
    total_rounds = rounds.pop()
    return PlanCost(tuple(totals), (contexts[0].by_node, contexts[1].by_node), contexts[0].materials, node_ops,
                    total_rounds, schedule, origins, _critical_path(plan.graph, schedule, total_rounds), network)


def _critical_path(graph, schedule: dict, rounds: int) -> dict[str, int]:
    """Node -> steps it spends on one longest chain of dependent openings; the
    steps sum to ``rounds``. Walks back from a node that finishes last to the
    operand it waited for (a node starts when its last operand is done); the
    steps after the schedule (the overflow verdict and the outputs it holds
    back) belong to the overflow check."""
    end = max((finish for _, finish in schedule.values()), default=0)
    path = {OVERFLOW_NODE: rounds - end} if rounds > end else {}
    node = next((n for n in reversed(graph.nodes) if schedule[n.name][1] == end), None)
    while node is not None and schedule[node.name][1] > 0:
        start, finish = schedule[node.name]
        if finish > start:
            path[node.name] = finish - start
        node = next((graph[o] for o in node.operands if schedule[o][1] == start), None)
    return path


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
