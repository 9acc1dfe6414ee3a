"""Run by tests/agent/test_local_ledger.py as a separate process: reserve one round in the
partner ledger, say so, then wait to be killed (SIGKILL, so nothing is cleaned up)."""

import sys
import time

from accounting import dp_events
from federation.agent.ledger import PartnerLedger
from federation.agent.ledger_format import RoundKey, default_data_id

state, round_id, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ledger = PartnerLedger.open(state)
data_id = default_data_id(data)
ledger.set_budget(data_id, epsilon=10.0, delta=1e-5)
res = ledger.reserve(
    RoundKey("https://coord.example", round_id, "hospital-a"), data_id=data_id,
    event=dp_events.round_event(0.01, 1.1, 100), ticket_hash="ab" * 32, data_path=data,
)
print("reserved", res.entry_hash, flush=True)
time.sleep(120)
