"""The two-party runtime: contexts, dealer, transport, executor, sessions."""
from .cost import PlanCost, plan_cost
from .dealer import Dealer, DealtMaterial, MaterialFileError
from .session import RunError, RunStats, Session, run

__all__ = ["run", "Session", "RunStats", "RunError", "Dealer", "DealtMaterial", "MaterialFileError", "plan_cost",
           "PlanCost"]
