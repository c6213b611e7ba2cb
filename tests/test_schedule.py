"""The scheduler: merging the openings of independent nodes changes rounds,
never results; a run's rounds are its critical path."""
import functools

import torch

import mpcc
import mpcc.runtime.session as session_module
from mpcc.runtime.dealer import Dealer
from mpcc.runtime.executor import execute
from mpcc.runtime.schedule import Flow, Gather, Message
from tests.conftest import token_ids


def _run(plan, weights, inputs, seeds, *, concurrent, monkeypatch):
    """One run with the dealer's seeds fixed (the same masks in both runs: two deployments)."""
    monkeypatch.setattr(session_module, "execute", functools.partial(execute, concurrent=concurrent))
    session = mpcc.Session(plan, weights, progress=False)
    session.dealer = Dealer(plan, seeds=seeds)
    outputs, stats = session.run(inputs, material=session.dealer.deal("same-masks"))
    monkeypatch.undo()
    return outputs, stats


def test_scheduling_changes_rounds_never_results(tiny_bert, monkeypatch):
    inputs = {"input_ids": token_ids(6, 120)}
    plan = mpcc.compile(tiny_bert, inputs)
    seeds = (b"\x01" * 32, b"\x02" * 32)
    merged, merged_stats = _run(plan, tiny_bert.state_dict(), inputs, seeds, concurrent=True, monkeypatch=monkeypatch)
    alone, alone_stats = _run(plan, tiny_bert.state_dict(), inputs, seeds, concurrent=False, monkeypatch=monkeypatch)
    assert torch.equal(merged[0], alone[0]), "the same masks must give the same bits, scheduled or not"
    cost = plan.cost()
    assert merged_stats.rounds == cost.rounds < alone_stats.rounds == cost.sequential_rounds
    assert merged_stats.online_bytes == alone_stats.online_bytes


def test_rounds_are_the_critical_path(tiny_bert):
    """Recomputed here from each node's own steps and the graph: the longest chain."""
    plan = mpcc.compile(tiny_bert, {"input_ids": token_ids(6, 120)})
    cost = plan.cost()
    steps = {node: cost.by_node[0][node].rounds if node in cost.by_node[0] else 0 for node in cost.schedule}
    finish = {}
    for node in plan.graph.nodes:
        finish[node.name] = max((finish[o] for o in node.operands), default=0) + steps.get(node.name, 0)
    assert cost.rounds == max(finish.values())
    assert cost.rounds < sum(steps.values()) == cost.sequential_rounds


def test_a_gather_shares_steps_and_a_spawn_finishes_with_its_node():
    class Resolve:   # a context whose steps resolve at once, counting them
        node, steps, flow = "n", 0, None

        def spawn(self, awaitable):
            self.flow.spawn(awaitable)

        def deliver(self, messages):
            self.steps += 1
            for m in messages:
                m.result = tuple(m.tensors)

    def opening(value):
        return Message("n", "exchange", (torch.tensor([value]),), [None], ["add"])

    async def chain(value, length):
        for _ in range(length):
            (value,) = await opening(value)
        return value

    async def protocol(ctx):
        ctx.spawn(chain(7, 5))          # beside the rest: the node takes max(3, 5) steps
        a, b = await Gather([chain(1, 3), chain(2, 2)])
        return a + b

    ctx = Resolve()
    flow = Flow.start(protocol(ctx), ctx)
    while not flow.done:
        ctx.deliver(flow.pending())
        flow.resume()
    assert flow.value.item() == 3 and flow.steps == 5 and ctx.steps == 5
