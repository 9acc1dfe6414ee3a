"""Writes of partners' receipts (ARCHITECTURE.md, Conventions 1): `receipt_record` stores a
partner's countersigned receipt of a round it ran, beside the ledger (docs/TRUST-FORMATS.md),
after checking it against what the ledger charged. The receipt format itself (signature,
chain hash) is the pure `accounting.receipts`.
"""

from __future__ import annotations

import json

from django.db import transaction
from django.utils import timezone

from .. import chain, dp_events, ledger
from .. import receipts as receipt_fmt
from ..errors import (
    MSG_RECEIPT_CONFLICT,
    MSG_RECEIPT_EVENT,
    MSG_RECEIPT_INVALID,
    MSG_RECEIPT_NO_DATASET,
    MSG_RECEIPT_NO_RESERVE,
    MSG_RECEIPT_RELEASED,
    MSG_RECEIPT_TICKET,
    MSG_RECEIPT_WRONG_ORGANISATION,
    ReceiptConflict,
    ReceiptInvalid,
    ReceiptMismatch,
)
from ..models import DatasetBudget, LedgerEntry, Receipt

__all__ = ["receipt_record"]


def receipt_record(*, receipt: dict, organisation, public_key: str) -> Receipt:
    """Check a partner's receipt against the ledger and store it (docs/TRUST-FORMATS.md).

    `public_key` is the organisation's enrolled agent key (hex), looked up by the caller.
    The receipt must be signed by it, name a dataset of `organisation` whose chain reserved
    `receipt["round"]` with an equal event and did not release it, and, once the round is
    committed with a ticket, name that ticket. Idempotent: the same receipt again returns
    the stored row; another receipt for the same round and dataset is a ReceiptConflict.
    Nothing is written on any error.
    """
    from federation.models import Dataset

    try:
        receipt_fmt.verify_signature(receipt, public_key)
    except receipt_fmt.ReceiptFormatError as e:
        raise ReceiptInvalid(MSG_RECEIPT_INVALID.format(error=e)) from None
    receipt = {k: receipt[k] for k in receipt_fmt.RECEIPT_FIELDS}
    slug, round_id = receipt["dataset"], receipt["round"]
    org_slug = getattr(organisation, "slug", organisation)
    budget_row = DatasetBudget.objects.filter(chain_slug=slug).first()
    if budget_row is None:
        raise ReceiptMismatch(MSG_RECEIPT_NO_DATASET.format(dataset=slug), dataset=slug)
    dataset = Dataset.objects.select_related("organisation").get(pk=budget_row.dataset_id)
    if dataset.organisation.slug != org_slug:
        raise ReceiptInvalid(
            MSG_RECEIPT_WRONG_ORGANISATION.format(dataset=slug, organisation=org_slug), dataset=slug, organisation=org_slug
        )
    body = dp_events.canonical_json(receipt)
    with transaction.atomic():
        ledger.lock_budget(dataset)  # serialises the dataset's receipt chain too
        existing = Receipt.objects.filter(dataset_id=dataset.pk, round_id=round_id).first()
        if existing is not None:
            if existing.body == body:
                return existing
            raise ReceiptConflict(MSG_RECEIPT_CONFLICT.format(dataset=slug, round=round_id), dataset=slug, round=round_id)
        entries = {
            kind: (event, payload)
            for kind, event, payload in LedgerEntry.objects.filter(dataset_id=dataset.pk, round_id=round_id).values_list(
                "kind", "event", "payload"
            )
        }
        facts = {"dataset": slug, "round": round_id}
        if chain.RESERVE not in entries:
            raise ReceiptMismatch(MSG_RECEIPT_NO_RESERVE.format(**facts), **facts)
        if chain.RELEASE in entries:
            raise ReceiptMismatch(MSG_RECEIPT_RELEASED.format(**facts), **facts)
        if not receipt_fmt.events_equal(receipt["event"], _json_loads(entries[chain.RESERVE][0])):
            raise ReceiptMismatch(MSG_RECEIPT_EVENT.format(**facts), **facts)
        if chain.COMMIT in entries:
            committed = _json_loads(entries[chain.COMMIT][1]).get("ticket_hash")
            if committed is not None and committed != receipt["ticket_hash"]:
                raise ReceiptMismatch(
                    MSG_RECEIPT_TICKET.format(ticket=receipt["ticket_hash"][:16], committed=committed[:16], **facts), **facts
                )
        last = Receipt.objects.filter(dataset_id=dataset.pk).order_by("-seq").values_list("seq", "receipt_hash").first()
        seq, prev_hash = (last[0] + 1, last[1]) if last else (1, receipt_fmt.GENESIS_HASH)
        row = Receipt(
            dataset_id=dataset.pk,
            dataset_slug=slug,
            seq=seq,
            round_id=round_id,
            organisation_slug=org_slug,
            ticket_hash=receipt["ticket_hash"],
            agent_public_key=receipt["agent_public_key"],
            body=body,
            received_at=timezone.now(),
            prev_hash=prev_hash,
            receipt_hash=receipt_fmt.chain_hash(prev_hash, receipt),
        )
        row.full_clean(exclude=["dataset", "round"], validate_unique=False, validate_constraints=False)
        row.save()
    return row


def _json_loads(text: str):
    return json.loads(text) if text else {}
