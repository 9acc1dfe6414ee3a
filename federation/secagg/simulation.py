"""Run a whole round in one process: for tests, the benchmark and local experiments.

Every message goes through its byte encoding, exactly as it would over HTTP, and with
``persist=True`` the server (and each client) is serialised and restored between calls,
as the Celery tasks and the partner agent will do.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .client import SecAggClient
from .errors import SecAggError
from .messages import RoundConfig
from .server import AggregateResult, SecAggServer


def make_identities(parties: Collection[str]) -> tuple[dict[str, Ed25519PrivateKey], dict[str, bytes]]:
    """Long-term Ed25519 identity keys: (private per party, registered public raw bytes per party)."""
    private = {p: Ed25519PrivateKey.generate() for p in parties}
    public = {p: k.public_key().public_bytes_raw() for p, k in private.items()}
    return private, public


def _reload_server(srv: SecAggServer) -> SecAggServer:
    return SecAggServer.from_bytes(srv.to_bytes(), running_sum=srv.running_sum_bytes())


def _reload_client(c: SecAggClient) -> SecAggClient:
    return SecAggClient.from_dict(json.loads(json.dumps(c.to_dict())), signing_key=c._signing_key)


def run_round(
    config: RoundConfig,
    inputs: Mapping[str, np.ndarray],
    *,
    identities: tuple[Mapping[str, Ed25519PrivateKey], Mapping[str, bytes]] | None = None,
    absent: Collection[str] = (),
    drop_after_advertise: Collection[str] = (),
    drop_after_share_keys: Collection[str] = (),
    drop_during_unmask: Collection[str] = (),
    persist: bool = False,
) -> AggregateResult:
    """One round; the named parties stop answering at the named point.

    ``absent`` never advertise keys; ``drop_after_advertise`` advertise and send nothing
    else; ``drop_after_share_keys`` send their shares but no masked input;
    ``drop_during_unmask`` send their masked input but no unmask response.
    Raises ``TooFewSurvivors`` (from the server) when fewer than t remain at some phase.
    """
    private, public = identities or make_identities(config.roster)
    srv = SecAggServer(config, identity_keys=public)
    reload_s = _reload_server if persist else (lambda s: s)
    reload_c = _reload_client if persist else (lambda c: c)
    clients = {
        p: SecAggClient(config, party=p, signing_key=private[p], identity_keys=public) for p in config.roster if p not in absent
    }

    for c in clients.values():
        srv.receive_advertise_keys(c.advertise_keys())
        srv = reload_s(srv)
    key_list = srv.close_advertise_keys()
    srv = reload_s(srv)
    live = [p for p in clients if p not in drop_after_advertise]

    for p in live:
        clients[p] = reload_c(clients[p])
        srv.receive_share_keys(clients[p].share_keys(key_list))
        srv = reload_s(srv)
    relays = srv.close_share_keys()
    srv = reload_s(srv)
    live = [p for p in live if p not in drop_after_share_keys]

    for p in live:
        clients[p] = reload_c(clients[p])
        srv.receive_masked_input(clients[p].masked_input(relays[p], inputs[p]))
        srv = reload_s(srv)
    request = srv.close_masked_input()
    srv = reload_s(srv)
    live = [p for p in live if p not in drop_during_unmask]

    for p in live:
        clients[p] = reload_c(clients[p])
        srv.receive_unmask_response(clients[p].unmask(request))
        srv = reload_s(srv)
    return srv.finalize()


__all__ = ["make_identities", "run_round", "SecAggError"]
