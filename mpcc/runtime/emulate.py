"""Fixed-point emulation: the secure run's numerics in one thread, fast.

Both parties run the plan's real protocol code in lockstep in this thread
(``execute_steps``), so the ring, every truncation, comparison width and
iteration count are those of ``mpcc.run``. What goes: the dealer's shape run
and AES PRG, dealt material, threads and queues. Randomness comes from a
torch generator, drawn whole (party 0 holds a shared draw, party 1 zero:
protocols see only sums, so results are distributed as in a secure run,
truncation errors included). Nothing here is private: it is for accuracy
studies over many inputs, never for data that must stay secret.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..backends import get_backend
from ..ops.wire import ClientShare
from .context import HOLDERS, Context, SessionState, deploy_once
from ..interpreter import check_inputs, check_weights, normalize_weights
from .executor import execute_steps
from .session import RunError, inputs_as_dict, split_inputs

__all__ = ["emulate", "Emulator"]


class _Randomness:
    """Whole values of every draw, by label, for one inference (deployment-scoped
    draws kept across inferences); both parties' requests for a label meet here."""

    def __init__(self, seed: int | None):
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        self.values: dict[str, torch.Tensor] = {}
        self.scoped: dict[str, torch.Tensor] = {}
        self.splits: dict[str, torch.Tensor] = {}   # party 1's share of a draw handed out split
        self.labels: dict[int, str] = {}   # id of a handed-out tensor -> its label (for derive's arguments)
        self.handed: list = []             # the handed-out tensors (their ids stay valid)

    def draw(self, label, shape, scoped: bool):
        store = self.scoped if scoped else self.values
        if label not in store:
            store[label] = self._uniform(shape)
        return store[label]

    def _uniform(self, shape) -> torch.Tensor:
        """Uniform ring elements (int64) from this generator."""
        return torch.randint(-2 ** 63, 2 ** 63 - 1, tuple(shape), dtype=torch.int64, generator=self.generator)

    def hand(self, label, whole, party: int, holder: str, split: bool = False):
        """This party's share of the draw ``label``: the whole for its one holder; for both, party 0
        the whole and party 1 zero, or, with ``split``, a uniform share each (a truncation opens
        only the high halves of the parties' shares, so its error depends on each share, not on
        their sum alone: party 1's share of its mask must be uniform, as in a secure run)."""
        owner = HOLDERS[holder]
        if owner is not None and owner != party:   # not this party's: a shape that names the draw, no value
            value = torch.empty(tuple(whole.shape), dtype=whole.dtype, device="meta")
        elif owner is None and split:
            if label not in self.splits:
                self.splits[label] = self._uniform(whole.shape)
            value = whole - self.splits[label] if party == 0 else self.splits[label]
        else:
            value = whole if owner is not None or party == 0 else torch.zeros_like(whole)
        self.labels[id(value)] = label
        self.handed.append(value)
        return value

    def whole(self, value):
        """The whole draw a handed-out share stands for; for a ``ClientShare``, the client's
        share of it (the whole, less party 1's share where the draw was split)."""
        client = isinstance(value, ClientShare)
        if client:
            value = value.handle
        label = self.labels.get(id(value)) if isinstance(value, torch.Tensor) else None
        if label is None:
            return value
        whole = self.values.get(label, self.scoped.get(label))
        return whole - self.splits[label] if client and label in self.splits else whole

    def forget(self):
        self.values.clear()
        self.splits.clear()
        self.labels.clear()
        self.handed.clear()


class _EmulatedParty(Context):
    """One party of the emulation: randomness from ``_Randomness``, messages paired
    by the lockstep driver (``deliver`` is never called)."""

    def __init__(self, party, backend, frac_bits, randomness: _Randomness, session: SessionState):
        self.party, self.backend, self.frac_bits = party, backend, frac_bits
        self.randomness, self.session = randomness, session
        self.node, self.counter = "", 0

    def rand(self, shape, *, holder="both", kind="ring", scope=None):
        label = self._label(scope)
        whole = self.randomness.draw(label, shape, bool(scope))
        if scope and HOLDERS[holder] == self.party:
            whole = whole.clone()   # the server makes D = W - B in its mask's memory; the draw must stay B
        return self.randomness.hand(label, whole, self.party, holder, split=not scope and kind == "ring")

    def derive(self, fn, *values, shape, holder="both", kind="ring"):
        label = self._label(None)
        store = self.randomness.values
        if label not in store:
            store[label] = fn(*[self.randomness.whole(v) for v in values])
        return self.randomness.hand(label, store[label], self.party, holder)

    async def deployment(self, key, make, like, *, sender):
        return await deploy_once(self, key, make, like, sender)


def _pair(step0, step1) -> None:
    """Give each party's messages of one step the peer's tensors."""
    if len(step0) != len(step1):
        raise RuntimeError(f"the parties' steps differ: {len(step0)} and {len(step1)} messages")
    for mine, theirs in zip(step0, step1):
        mine.result = tuple(theirs.tensors) if mine.receives(0) else None
        theirs.result = tuple(mine.tensors) if theirs.receives(1) else None


class Emulator:
    """Runs a plan's fixed-point arithmetic for many inputs (the weights' setup once)."""

    def __init__(self, plan, weights: Mapping[str, torch.Tensor], *, seed: int | None = None, backend: str = "cpu"):
        self.plan, self.backend = plan, get_backend(backend)
        try:
            self.weights = normalize_weights(weights)
            check_weights(plan.graph, self.weights, frac_bits=plan.frac_bits)
        except Exception as error:
            raise RunError(str(error)) from None
        self.randomness = _Randomness(seed)
        static = plan.graph.static_values()
        self.sessions = (SessionState(static=static), SessionState(static=static))

    def run(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The client's outputs in plan order, as ``mpcc.run`` would compute them."""
        inputs = inputs_as_dict(self.plan, inputs)
        try:
            check_inputs(self.plan.graph, inputs, self.plan.info.get("input_ranges"))
        except Exception as error:
            raise RunError(str(error)) from None
        party_inputs = split_inputs(self.plan, inputs)
        runs = [execute_steps(self.plan.graph,
                              _EmulatedParty(p, self.backend, self.plan.frac_bits, self.randomness, self.sessions[p]),
                              party_inputs[p], self.weights if p == 1 else None,
                              overflow_check=self.plan.overflow_check) for p in (0, 1)]
        results = [None, None]
        try:
            with torch.no_grad():
                steps = [next(run) for run in runs]
                while True:
                    _pair(*steps)
                    for party in (0, 1):
                        try:
                            steps[party] = runs[party].send(None)
                        except StopIteration as stop:
                            results[party], steps[party] = stop.value, None
                    if steps[0] is None or steps[1] is None:
                        if steps[0] is not steps[1]:
                            raise RuntimeError("one party finished while the other still sends")
                        break
        except StopIteration as stop:   # a plan with no communication at all
            results[0] = stop.value
        finally:
            self.randomness.forget()
        return [results[0][name] for name in self.plan.graph.outputs]


def emulate(plan, inputs: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], *,
            seed: int | None = None) -> list[torch.Tensor]:
    """The outputs ``mpcc.run(plan, inputs, weights)`` would give, computed in one
    thread without the protocol overhead: same ring, truncations, comparison
    widths and iteration counts; the truncations' random errors (within 1.5 ulp) differ
    run to run as in the secure run. For many inputs, make one ``Emulator``.

    Example:
        >>> import torch, mpcc
        >>> model = torch.nn.Linear(4, 2)
        >>> plan = mpcc.compile(model, (torch.ones(1, 4),))
        >>> out = mpcc.emulate(plan, (torch.ones(1, 4),), model.state_dict())
        >>> bool((out[0] - model(torch.ones(1, 4))).abs().max() < 1e-3)
        True
    """
    return Emulator(plan, weights, seed=seed).run(inputs)
