"""What the operator sets when starting an agent (`python -m federation.agent`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checks import EVAL_NOISE_FLOOR


@dataclass
class AgentConfig:
    server: str
    token: str
    data: Path
    state_dir: Path
    dropout: float = 0.0  # probability of skipping a round's masked input (simulations)
    eval_fraction: float = 0.2
    poll_wait: float = 10.0
    send_retry: float = 60.0  # seconds a message is retried before waiting to be asked again
    seed: int | None = None  # tests only: the coordinator never chooses a partner's noise
    coordinator_key: str | None = None  # pinned ledger key (hex); None: pinned at first enrolment
    eval_noise_floor: float = EVAL_NOISE_FLOOR
    # The partner's own ledger (docs/PARTNER-LEDGER.md)
    data_id: str | None = None  # None: the data file's resolved path
    budget: float | None = None  # the operator's local epsilon budget (None: the smallest shown)
    delta: float | None = None
