"""What the server checks before it runs a plan: a plan file is public and
anyone can edit it, so the server decides what it runs and what it reveals.

1. ``lint``: the IR rules (SSA, known ops, visibilities that agree).
2. The reveal policy: every ``mpc.reveal`` is a declared output of the plan,
   goes to the client (the outputs' owner), and depends on at least one of the
   client's inputs: nothing derived only from values the server knows
   (weights, server and public inputs, constants) is opened to the client.
   Every computed value reaches a declared output: no side computation whose
   only effect is a failure or an overflow flag (an oracle on the weights).
3. Server operands sent once: ``linear_server``, ``mul_server`` and
   ``layer_norm``'s gamma mask the server's operand once per deployment
   (D = W - B); an operand that changes per inference (it depends on a server
   input) would reuse B, so it must be fixed for the deployment.
4. Pinning (optional): only plans whose hash the server pinned, the plans it
   compiled itself. Structure checks cannot tell a model's real outputs from
   an edited plan that mixes a weight into an output; a pin can.
"""
from __future__ import annotations

from typing import Iterable

from ..verify import LintError, lint

__all__ = ["PlanRefused", "accept_plan", "reveal_problems"]


class PlanRefused(ValueError):
    """The server will not run this plan; says why."""


def reveal_problems(graph) -> list[str]:
    """Every way ``graph``'s reveals break the policy, one line each."""
    client_inputs = {n.name for n in graph.inputs if n.attrs.get("owner") == "client"}
    reaches_client_input: dict[str, bool] = {}
    for node in graph.nodes:
        reaches_client_input[node.name] = node.name in client_inputs or any(
            reaches_client_input[o] for o in node.operands)
    outputs = set(graph.outputs)
    problems = []
    for node in graph.nodes:
        if node.op != "mpc.reveal":
            continue
        where = f"%{node.name} = mpc.reveal(%{node.operands[0]}) in {node.origin or '<top>'}"
        if node.attrs.get("to", "client") != "client":
            problems.append(f"{where} opens a value to {node.attrs.get('to')!r}; outputs go to the client only")
        if node.name not in outputs:
            problems.append(f"{where} is not a declared output of the plan")
        if not reaches_client_input[node.name]:
            problems.append(f"{where} depends on no client input: it would hand the client server values")
    needed = set(graph.outputs)
    for node in reversed(graph.nodes):
        if node.name in needed:
            needed.update(node.operands)
    for node in graph.nodes:
        if node.name not in needed and node.op not in ("input", "param"):
            problems.append(f"%{node.name} = {node.op}(...) in {node.origin or '<top>'} reaches no declared output")
    return problems


ONCE_PER_DEPLOYMENT = {"mpc.linear_server": "weight", "mpc.lookup_server": "weight", "mpc.mul_server": "other",
                       "mpc.layer_norm": "weight", "mpc.layer_norm_goldschmidt": "weight", "mpc.rms_norm": "weight"}


def deployment_operand_problems(graph) -> list[str]:
    """Server operands masked once per deployment that are not fixed for it."""
    from ..ops import get_op
    static = graph.static_values()
    problems = []
    for node in graph.nodes:
        param = ONCE_PER_DEPLOYMENT.get(node.op)
        if param is None:
            continue
        named = dict(zip(get_op(node.op).operand_params(node.attrs), node.operands))
        operand = named.get(param)
        if operand is not None and graph[operand].type.vis == "server" and operand not in static:
            problems.append(f"%{node.name} = {node.op}(...) masks %{operand} once per deployment, but it changes "
                            f"per inference")
    return problems


def accept_plan(plan, pinned: Iterable[str] | None = None) -> None:
    """Raise ``PlanRefused`` unless the server may run ``plan`` (see the module doc)."""
    if pinned is not None:
        pins = set(pinned)
        if plan.hash not in pins:
            raise PlanRefused(f"plan {plan.hash[:16]} is not one of the {len(pins)} plan(s) this server pinned; "
                              f"compile the model on the server and pin that plan's hash")
    try:
        lint(plan.graph)
    except LintError as error:
        raise PlanRefused(f"the plan breaks an IR rule: {error}") from None
    problems = deployment_operand_problems(plan.graph)
    if problems:
        raise PlanRefused("the plan would reuse a deployment mask: " + "; ".join(problems[:3]))
    problems = reveal_problems(plan.graph)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise PlanRefused("the plan reveals what the server does not allow: " + "; ".join(problems[:3]) + more)
