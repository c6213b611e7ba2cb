"""The two-party runtime: contexts, dealer, transport, executor, sessions."""
from .cost import PlanCost, plan_cost
from .dealer import Dealer, DealerError, DealtMaterial, MaterialFileError
from .session import PlanRefused, RunError, RunStats, Session, run
from .emulate import Emulator, emulate

__all__ = ["run", "Session", "RunStats", "RunError", "PlanRefused", "Dealer", "DealtMaterial", "MaterialFileError", "DealerError", "plan_cost",
           "PlanCost", "emulate", "Emulator"]
