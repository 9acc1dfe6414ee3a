"""What the agent keeps of one live round between its phases (see federation/agent/runner.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .. import secagg


@dataclass
class RoundWork:
    round_pk: int
    config: secagg.RoundConfig
    client: secagg.SecAggClient
    update: np.ndarray | None = None
    spec: dict = field(default_factory=dict)
    skip_masked_input: bool = False
    sent: dict[str, tuple[bytes, bool]] = field(default_factory=dict)  # phase -> (body, binary)
    started: float = field(default_factory=time.monotonic)
    ticket: dict = field(default_factory=dict)  # the verified ticket the round runs
    ticket_hash: str = ""
    dataset: str = ""  # the coordinator's dataset slug the round ran on
    data_key: str = ""  # which local split the round trained on: it evaluates on the same
    local_key: object = None  # the round's key in the partner ledger, once reserved
    committed: bool = False  # the partner ledger committed it (the masked input may have left)
    receipt: dict | None = None  # signed, not yet accepted by the coordinator


WORK_TTL = 24 * 3600.0  # a round's keys and update are forgotten a day after it began
