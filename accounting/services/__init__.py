"""Writes to the accounting app (ARCHITECTURE.md, Conventions 1): `budget` (grant, reserve,
commit, release of the privacy-budget ledger) and `receipts` (partners' receipts)."""
