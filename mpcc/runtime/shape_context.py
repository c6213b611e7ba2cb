"""Shape-only contexts: the dealer's (which generates material for real) and
the cost model's (which counts). Both run the protocols on meta tensors."""
from __future__ import annotations

from dataclasses import replace

import torch

from ..backends.base import RingBackend
from ..backends.prg import Prg
from .context import HOLDERS, Context, Material, message_bytes, payload_bytes
from .schedule import meta_like
from ..ops.wire import ClientShare

__all__ = ["ShapeContext", "DealerContext", "CostContext", "OpCost", "Replay", "replay"]


def _meta(shape, dtype=torch.int64):
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


class ShapeContext(Context):
    meta = True

    def __init__(self, party: int, backend: RingBackend, frac_bits: int):
        self.party, self.backend, self.frac_bits = party, backend, frac_bits
        self.node, self.counter = "", 0
        self.materials: list[Material] = []
        self._templates: dict[tuple, tuple | None] = {}   # node signature -> what its protocol recorded
        self._shared = {"pending": None}   # the template being recorded (shared with the per-node views)
        self.node_steps: dict[str, int] = {}   # node -> communication steps of its protocol

    def begin(self, node):
        self._keep_template()
        super().begin(node)

    # --- twin nodes: the twelve layers of a BERT make the same requests under other names
    def recall(self, node) -> bool:
        """Record ``node`` by copying what an earlier node with the same op,
        attributes and operand types recorded, renamed; False when there is
        none yet (then the protocol runs, and what it records is kept).

        Sound because protocols never branch on data, and names enter only
        labels and deployment scopes (an operand's name + a variant suffix).
        """
        self._shared["pending"] = None
        key = _signature(node, self.operand_types, self.out_type)
        if key is None:
            return False
        if key not in self._templates:
            self._shared["pending"] = (key, self._mark(), dict(self.operand_names))
            return False
        template = self._templates[key]
        if template is None:
            return False
        recorded, names, first_node = template
        self._copy(node.name, recorded, {names[param]: self.operand_names[param] for param in names}, first_node)
        return True

    def _keep_template(self):
        if self._shared["pending"] is None:
            return
        key, mark, names = self._shared["pending"]
        self._shared["pending"] = None
        recorded = self._since(mark, set(names.values()))
        self._templates[key] = None if recorded is None else (recorded, names, self.node)

    def _mark(self) -> tuple:
        return (len(self.materials),)

    def _since(self, mark, names: set[str]) -> tuple | None:
        """What the node begun at ``mark`` recorded (``names``: its operands'); None
        if it cannot be renamed."""
        flags = None if self.overflow_flags is None else list(self.overflow_flags.get(self.node, []))
        return (self.materials[mark[0]:], flags, self.node_steps.get(self.node, 0))

    def _copy(self, node: str, recorded: tuple, renamed: dict[str, str], first_node: str) -> None:
        self.materials.extend(replace(material, node=node) for material in recorded[0])
        self.node_steps[node] = recorded[2]
        if recorded[1]:   # the overflow check's flags (shapes): the final OR must see every node's
            self.overflow_flags[node] = list(recorded[1])

    def _record(self, shape, kind, holder, stored):
        self.materials.append(Material(self.node, self.counter - 1, tuple(shape), kind, holder, stored))

    def deliver(self, messages):
        for message in messages:
            message.result = tuple(meta_like(t) for t in message.tensors) if message.receives(self.party) else None

    async def deployment(self, key, make, like, *, sender):
        return None if self.party == sender else meta_like(like)


class DealerContext(ShapeContext):
    """Runs a plan's protocols on shapes once and records every request for
    randomness as a tape; ``replay`` deals the tape for real for one inference.

    The requests never depend on data, so the tape is the same for every
    inference: the (slow) shape run happens once per plan.
    """

    def __init__(self, backend, frac_bits):
        super().__init__(0, backend, frac_bits)
        self.tape: list[tuple] = []              # (node, label, op, shape, kind, holder, scope, fn, arg slots)
        # id(meta) -> (meta, slot), for the whole run: a wire's cross terms refer to other nodes' draws
        # (the meta kept here keeps its id unique)
        self.slots: dict[int, tuple[torch.Tensor, int]] = {}
        self.exported: set[int] = set()   # slots of values in wires that nodes returned

    def export(self, wire) -> None:
        """A node returned ``wire``: later nodes may derive from its dealt values."""
        for part in wire.parts:
            self.exported.add(self.slots[id(part.handle)][1])

    def _mark(self):
        return super()._mark() + (len(self.tape),)

    def _since(self, mark, names):
        entries = self.tape[mark[-1]:]
        if not all(_rename_scope(entry[6], {n: n for n in names}) is not None for entry in entries if entry[6]):
            return None
        if any(how == "slot" and ref < mark[-1] for entry in entries for how, ref in entry[8]):
            return None   # it derives from another node's material: a renamed copy would refer to the wrong one
        return super()._since(mark, names) + (entries, mark[-1])

    def _copy(self, node, recorded, renamed, first_node):
        super()._copy(node, recorded, renamed, first_node)
        entries, first_index = recorded[-2:]
        offset = len(self.tape) - first_index
        for _, label, op, shape, kind, holder, scope, fn, args in entries:
            scope = _rename_scope(scope, renamed) if scope else None
            label = f"deploy/{scope}" if scope else node + label[len(first_node):]
            args = tuple((how, ref + offset) if how == "slot" else (how, ref) for how, ref in args)
            self.tape.append((node, label, op, shape, kind, holder, scope, fn, args))

    def _slot(self, shape):
        meta = _meta(shape)
        self.slots[id(meta)] = (meta, len(self.tape) - 1)
        return meta

    def rand(self, shape, *, holder="both", kind="ring", scope=None):
        label = self._label(scope)
        self.tape.append((self.node, label, "rand", tuple(shape), kind, holder, scope, None, ()))
        self._record(shape, kind, holder, False)
        return self._slot(shape)

    def derive(self, fn, *values, shape, holder="both", kind="ring"):
        label = self._label(None)
        args = tuple(("slot", self.slots[id(v)][1]) if isinstance(v, torch.Tensor) else
                     ("client share", self.slots[id(v.handle)][1]) if isinstance(v, ClientShare) else ("value", v)
                     for v in values)
        self.tape.append((self.node, label, "derive", tuple(shape), kind, holder, None, fn, args))
        self._record(shape, kind, holder, True)
        return self._slot(shape)


class Replay:
    """Deals tape entries for real, one node at a time, for one inference.

    ``publish(node)`` is called once all of a node's items are dealt, so that
    parties can consume material while the rest is still being made.
    ``scoped`` caches deployment-scoped draws across inferences.
    """

    def __init__(self, backend, seeds: tuple[bytes, bytes], inference: str, stored=None, publish=None, scoped=None,
                 exported=frozenset()):
        self.backend, self.inference, self.publish = backend, inference, publish
        self.prgs = (Prg(seeds[0]), Prg(seeds[1]))
        self.stored = stored if stored is not None else ({}, {})
        self.offline = [0, 0]
        self.scoped = {} if scoped is None else scoped
        self.exported = exported   # tape indices of values that later nodes derive from (wires)
        self.kept: dict[int, torch.Tensor] = {}   # their values, for this inference
        self.kept_client: dict[int, torch.Tensor] = {}   # and the client's shares of them

    def _draw(self, party, label, shape, scope):
        if scope:
            if (party, label) not in self.scoped:
                self.scoped[(party, label)] = self.backend.to_device(self.prgs[party].ring(label, shape))
            return self.scoped[(party, label)]
        return self.backend.to_device(self.prgs[party].ring(f"{self.inference}/{label}", shape))

    def _client_share(self, ref: int) -> torch.Tensor:
        """The client's share of an exported value dealt to both (kept when it was dealt:
        no label is drawn twice)."""
        if ref not in self.kept_client:
            raise RuntimeError(f"tape entry {ref}: a client share of a value not exported or not shared by both")
        return self.kept_client[ref]

    def node(self, tape, start: int, stop: int) -> None:
        """Deal ``tape[start:stop]``, all the entries of one node, and publish it."""
        values: dict[int, torch.Tensor] = self.kept   # tape index -> full value: the node's own, and wires'
        read = {ref for entry in tape[start:stop] for how, ref in entry[8] if how == "slot"}  # kept only if read
        # client shares this node's own derives read (those of exported values are kept anyway)
        client_read = {ref for entry in tape[start:stop] for how, ref in entry[8] if how == "client share"}
        own = set()
        node = None
        for index in range(start, stop):
            node, label, op, shape, kind, holder, scope, fn, args = tape[index]
            owner = HOLDERS[holder]
            if op == "rand":
                if owner is None:
                    a, b = self._draw(0, label, shape, scope), self._draw(1, label, shape, scope)
                    values[index] = a ^ b if kind == "xor" else a + b
                    if index in self.exported or index in client_read:
                        self.kept_client[index] = a
                else:
                    values[index] = self._draw(owner, label, shape, scope)
                    if owner == 0 and (index in self.exported or index in client_read):
                        self.kept_client[index] = values[index]   # the client's own: its share is the value
                own.add(index)
                continue
            real = fn(*[values[ref] if how == "slot" else self._client_share(ref) if how == "client share"
                        else ref for how, ref in args])
            if tuple(real.shape) != shape:
                raise RuntimeError(f"{node}: dealt value has shape {tuple(real.shape)}, protocol said {shape}")
            if owner is None:
                share0 = self._draw(0, label, shape, None)
                piece, party = (real ^ share0 if kind == "xor" else real - share0), 1
                if index in self.exported or index in client_read:
                    self.kept_client[index] = share0
            else:
                piece, party = real, owner
            self.stored[party].setdefault(node, []).append(piece)
            self.offline[party] += payload_bytes(piece)
            if index in read or index in self.exported:
                values[index] = real
                own.add(index)
        for index in own - self.exported:   # the node's own draws: no later node reads them
            del values[index]
            self.kept_client.pop(index, None)
        if node is not None and self.publish is not None:
            self.publish(node)

    def tape(self, tape) -> None:
        """Deal a whole recorded tape, node by node."""
        for start, stop in node_spans(tape):
            self.node(tape, start, stop)


def _signature(node, operand_types, out_type):
    """What a node's requests for randomness depend on; None when an attribute
    is a tensor (not worth comparing)."""
    if any(isinstance(value, torch.Tensor) for value in node.attrs.values()):
        return None
    return (node.op, repr(sorted(node.attrs.items())), tuple(sorted((p, repr(t)) for p, t in operand_types.items())),
            repr(out_type))


def _rename_scope(scope: str, renamed: dict[str, str]) -> str | None:
    """A deployment scope (an operand's name, maybe + "^variant") under new operand names."""
    matches = [old for old in renamed if scope == old or scope.startswith(old + "^")]
    if not matches:
        return None
    old = max(matches, key=len)
    return renamed[old] + scope[len(old):]


def node_spans(tape):
    """(start, stop) of each node's run of entries in a tape."""
    start = 0
    for index in range(1, len(tape) + 1):
        if index == len(tape) or tape[index][0] != tape[start][0]:
            yield start, index
            start = index


def replay(tape, backend, seeds: tuple[bytes, bytes], inference: str, stored=None, publish=None, scoped=None,
           exported=frozenset()):
    """Deal a whole recorded tape: returns (stored per party per node, offline bytes per party)."""
    dealing = Replay(backend, seeds, inference, stored, publish, scoped, exported)
    dealing.tape(tape)
    return dealing.stored, dealing.offline


class OpCost:
    """Counters for one party: rounds, bytes sent online, setup, stored material."""

    def __init__(self):
        self.rounds = 0
        self.online_bytes = 0
        self.setup_bytes = 0
        self.offline_bytes = 0

    def add(self, other: "OpCost") -> None:
        self.rounds += other.rounds
        self.online_bytes += other.online_bytes
        self.setup_bytes += other.setup_bytes
        self.offline_bytes += other.offline_bytes

    def as_dict(self):
        return {"rounds": self.rounds, "online_bytes": self.online_bytes, "setup_bytes": self.setup_bytes,
                "offline_bytes": self.offline_bytes}


class CostContext(ShapeContext):
    """Counts what one party sends and what the dealer stores for it, per node."""

    def __init__(self, party, backend, frac_bits):
        super().__init__(party, backend, frac_bits)
        self.by_node: dict[str, OpCost] = {}
        self._deployed: set[str] = set()
        self._deployments: list[tuple[str, int, int]] = []   # (key, bytes, sender) of every deployment call

    def _mark(self):
        return super()._mark() + (len(self._deployments),)

    def _since(self, mark, names):
        deployments = self._deployments[mark[-1]:]
        if not all(_rename_scope(key, {n: n for n in names}) is not None for key, _, _ in deployments):
            return None
        cost = self.by_node.get(self.node)
        return super()._since(mark, names) + (cost, deployments)

    def _copy(self, node, recorded, renamed, first_node):
        super()._copy(node, recorded, renamed, first_node)
        cost, deployments = recorded[-2:]
        if cost is not None:
            self.by_node[node] = OpCost()
            self.by_node[node].add(cost)
            self.by_node[node].setup_bytes = 0
        for key, size, sender in deployments:
            self._deploy(_rename_scope(key, renamed), size, sender)

    def _deploy(self, key, size, sender):
        self._deployments.append((key, size, sender))
        if self.party == sender and key not in self._deployed:
            self._deployed.add(key)
            self._cost().setup_bytes += size

    def _cost(self) -> OpCost:
        return self.by_node.setdefault(self.node, OpCost())

    def rand(self, shape, *, holder="both", kind="ring", scope=None):
        self._label(scope)
        self._record(shape, kind, holder, False)
        return _meta(shape)

    def derive(self, fn, *values, shape, holder="both", kind="ring"):
        self._label(None)
        self._record(shape, kind, holder, True)
        tensor = _meta(shape)
        owner = HOLDERS[holder]
        if (owner is None and self.party == 1) or owner == self.party:
            self._cost().offline_bytes += payload_bytes(tensor)
        return tensor

    def deliver(self, messages):
        """One step: a round for each node taking part; bytes for what this party sends."""
        for node in dict.fromkeys(message.node for message in messages):
            self.by_node.setdefault(node, OpCost()).rounds += 1
        for message in messages:
            if message.sends(self.party) and message.kind != "setup":
                self.by_node.setdefault(message.node, OpCost()).online_bytes += message_bytes(message.tensors,
                                                                                           message.bits)
        super().deliver(messages)

    async def deployment(self, key, make, like, *, sender):
        self._deploy(key, payload_bytes(like), sender)
        return await super().deployment(key, make, like, sender=sender)
