"""The partner agent: the program a partner runs beside its data.

No Django: it needs numpy, cryptography and requests, and the two pure packages
`federation.learning` (DP-SGD, evaluation, quantisation) and `federation.secagg` (the
secure-aggregation client). It reaches out to the coordinator over HTTP(S); the coordinator
never connects to it. It never sends a record: only its masked, quantised DP-SGD update,
the protocol's keys and shares, and noisy evaluation counts.
"""

from .checks import PlanRefused
from .config import AgentConfig
from .runner import Agent

__all__ = ["Agent", "AgentConfig", "PlanRefused"]
