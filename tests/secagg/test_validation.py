"""Every malformed, replayed, out-of-turn or forged message is refused with a stable code,
the refusing side is unchanged, and the round still completes for everyone else."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from federation.secagg import (
    BadCiphertext,
    BadLength,
    BadSignature,
    DuplicateSender,
    InconsistentView,
    MalformedMessage,
    MessageTooLarge,
    NotAMember,
    ReplayedMessage,
    RoundAborted,
    RoundConfig,
    SecAggClient,
    SecAggError,
    SecAggServer,
    TooFewSurvivors,
    UnmaskConflict,
    WrongPhase,
    WrongRecipient,
    WrongRound,
    errors,
    max_body_bytes,
)
from federation.secagg.messages import masked_input_buffer
from federation.secagg.simulation import make_identities

from .helpers import Harness, assert_rejected, modular_sum, tamper_json


def _flip_b64(value: str, at: int = 0) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[at] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _client_state(client: SecAggClient) -> str:
    return json.dumps(client.to_dict(), sort_keys=True)


def _assert_client_refuses(client, step, body, error, code, *args):
    before = _client_state(client)
    with pytest.raises(error) as info:
        step(body, *args)
    assert info.value.code == code
    assert _client_state(client) == before
    return info.value


def test_error_codes_are_stable_and_distinct():
    codes = {cls.code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, SecAggError)}
    assert {
        "malformed",
        "too_large",
        "wrong_round",
        "wrong_phase",
        "replay",
        "bad_signature",
        "bad_ciphertext",
        "not_a_member",
        "wrong_recipient",
        "bad_length",
        "duplicate_sender",
        "too_few_survivors",
        "unmask_conflict",
        "inconsistent",
        "reconstruction_failed",
        "aborted",
    } <= codes
    err = TooFewSurvivors("2 left", survivors=2, threshold=3)
    assert err.as_dict() == {"code": "too_few_survivors", "message": errors.MSG_TOO_FEW_SURVIVORS, "detail": "2 left"}
    assert (err.survivors, err.threshold) == (2, 3)


# ------------------------------------------------------------------ server side: AdvertiseKeys


def test_server_refuses_an_advertisement_whose_keys_were_altered():
    h = Harness(4)
    msg = h.clients["org-1"].advertise_keys()
    forged = tamper_json(msg, c_pk=_flip_b64(json.loads(msg)["c_pk"]))
    assert_rejected(h.server, h.server.receive_advertise_keys, forged, BadSignature, "bad_signature")
    h.server.receive_advertise_keys(msg)  # the genuine one is still accepted


def test_server_refuses_an_advertisement_signed_by_another_identity():
    h = Harness(4)
    impostor = SecAggClient(h.config, party="org-2", signing_key=h.private["org-2"], identity_keys=h.public)
    msg = json.loads(impostor.advertise_keys())
    msg["sender"] = "org-1"  # org-2 signs, claims to be org-1
    assert_rejected(h.server, h.server.receive_advertise_keys, json.dumps(msg).encode(), BadSignature, "bad_signature")


def test_server_refuses_an_advertisement_from_outside_the_roster():
    h = Harness(4)
    private, public = make_identities(["org-x"])
    outsider_cfg = RoundConfig(h.config.round_id, h.roster + ("org-x",), h.config.threshold, h.config.vector_length)
    outsider = SecAggClient(outsider_cfg, party="org-x", signing_key=private["org-x"], identity_keys={**h.public, **public})
    assert_rejected(h.server, h.server.receive_advertise_keys, outsider.advertise_keys(), NotAMember, "not_a_member")


def test_server_refuses_an_advertisement_of_another_round():
    h = Harness(4)
    other = RoundConfig("round-2", h.roster, h.config.threshold, h.config.vector_length)
    msg = h.new_client("org-1", other).advertise_keys()
    assert_rejected(h.server, h.server.receive_advertise_keys, msg, WrongRound, "wrong_round")
    # Relabelling it does not help: the signature binds the round.
    relabelled = tamper_json(msg, round=h.config.round_id)
    assert_rejected(h.server, h.server.receive_advertise_keys, relabelled, BadSignature, "bad_signature")


def test_server_refuses_a_replayed_advertisement_in_and_after_its_phase():
    h = Harness(4)
    sent = h.advertise()
    assert_rejected(h.server, h.server.receive_advertise_keys, sent["org-0"], ReplayedMessage, "replay")
    h.close_advertise()
    assert_rejected(h.server, h.server.receive_advertise_keys, sent["org-0"], ReplayedMessage, "replay")


def test_server_refuses_a_second_different_advertisement_from_one_sender():
    h = Harness(4)
    h.advertise(["org-0"])
    second = h.new_client("org-0").advertise_keys()  # validly signed, other keys
    assert_rejected(h.server, h.server.receive_advertise_keys, second, DuplicateSender, "duplicate_sender")


def test_server_refuses_a_late_advertisement_once_share_keys_is_open():
    h = Harness(4, t=3)
    h.advertise(h.roster[:3])
    h.close_advertise()
    late = h.clients["org-3"].advertise_keys()
    assert_rejected(h.server, h.server.receive_advertise_keys, late, WrongPhase, "wrong_phase")


@pytest.mark.parametrize("kind", ["share_keys", "masked_input", "unmask_response"])
def test_server_refuses_messages_of_a_later_phase_out_of_turn(kind):
    h = Harness(4, d=8)
    msg = {"v": 1, "type": kind, "round": h.config.round_id, "sender": "org-0", "nonce": base64.b64encode(b"n" * 16).decode()}
    if kind == "masked_input":
        body, offset = masked_input_buffer(dict(msg, d=8), 8)
        assert_rejected(h.server, h.server.receive_masked_input, bytes(body), WrongPhase, "wrong_phase")
    else:
        receive = {"share_keys": h.server.receive_share_keys, "unmask_response": h.server.receive_unmask_response}[kind]
        assert_rejected(h.server, receive, json.dumps(dict(msg, shares=[])).encode(), WrongPhase, "wrong_phase")
    # ...and a message of one type handed to another phase's entry point is out of turn too.
    assert_rejected(h.server, h.server.receive_advertise_keys, json.dumps(msg).encode(), WrongPhase, "wrong_phase")


def test_server_refuses_a_reused_public_key():
    h = Harness(4)
    h.advertise(["org-0"])
    a = json.loads(h.sent["advertise"]["org-0"])
    # org-1 signs org-0's masking key as its own: refused even with a valid signature.
    from federation.secagg import crypto

    c_pk = base64.b64decode(a["s_pk"])
    _, s_pk = crypto.x25519_generate()
    sig = crypto.sign(
        h.private["org-1"], crypto.advertise_transcript(config_digest=h.config.digest(), sender="org-1", c_pk=c_pk, s_pk=s_pk)
    )
    msg = {
        "v": 1,
        "type": "advertise_keys",
        "round": h.config.round_id,
        "sender": "org-1",
        "nonce": base64.b64encode(b"m" * 16).decode(),
        "c_pk": a["s_pk"],
        "s_pk": base64.b64encode(s_pk).decode(),
        "sig": base64.b64encode(sig).decode(),
    }
    assert_rejected(h.server, h.server.receive_advertise_keys, json.dumps(msg).encode(), InconsistentView, "inconsistent")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"v": 1, "v": 1}',
        b'{"v": 2, "type": "advertise_keys"}',
        "\xff".encode("latin-1"),
    ],
)
def test_server_refuses_malformed_bodies(body):
    h = Harness(3)
    with pytest.raises(SecAggError) as info:
        h.server.receive_advertise_keys(body)
    assert info.value.code in {"malformed", "wrong_round"}
    assert h.server.pending() == list(h.roster)


def test_deeply_nested_json_is_malformed_not_a_crash():
    h = Harness(10)
    h.advertise()
    h.close_advertise()
    deep = b"[" * 3000 + b"]" * 3000  # under the ShareKeys cap, deeper than the parser's recursion limit
    assert len(deep) <= max_body_bytes(h.config, "share_keys")
    assert_rejected(h.server, h.server.receive_share_keys, deep, MalformedMessage, "malformed")
    c = h.clients["org-0"]
    _assert_client_refuses(c, c.share_keys, deep, MalformedMessage, "malformed")


def test_server_refuses_oversized_messages_before_parsing():
    h = Harness(3)
    cap = max_body_bytes(h.config, "advertise_keys")
    assert_rejected(h.server, h.server.receive_advertise_keys, b" " * (cap + 1), MessageTooLarge, "too_large")


# ------------------------------------------------------------------ server side: ShareKeys


def test_server_refuses_share_keys_from_a_party_that_did_not_advertise():
    h = Harness(5, t=3)
    h.advertise(h.roster[:4])
    h.close_advertise()
    msg = json.loads(h.clients["org-0"].share_keys(h.key_list))
    msg["sender"] = "org-4"  # in the roster, but not in U1
    assert_rejected(h.server, h.server.receive_share_keys, json.dumps(msg).encode(), NotAMember, "not_a_member")
    msg["sender"] = "org-9"  # not in the roster at all
    assert_rejected(h.server, h.server.receive_share_keys, json.dumps(msg).encode(), NotAMember, "not_a_member")


def test_server_refuses_a_share_addressed_to_a_non_member():
    h = Harness(4)
    h.advertise()
    h.close_advertise()
    msg = json.loads(h.clients["org-0"].share_keys(h.key_list))
    msg["shares"][0]["to"] = "org-9"
    assert_rejected(h.server, h.server.receive_share_keys, json.dumps(msg).encode(), NotAMember, "not_a_member")


def test_server_refuses_two_shares_for_one_recipient_or_a_missing_one():
    h = Harness(4)
    h.advertise()
    h.close_advertise()
    msg = json.loads(h.clients["org-0"].share_keys(h.key_list))
    dup = dict(msg, shares=[msg["shares"][0], msg["shares"][0], msg["shares"][1]])
    assert_rejected(h.server, h.server.receive_share_keys, json.dumps(dup).encode(), DuplicateSender, "duplicate_sender")
    short = dict(msg, shares=msg["shares"][:-1])
    assert_rejected(h.server, h.server.receive_share_keys, json.dumps(short).encode(), InconsistentView, "inconsistent")
    bad = dict(msg, shares=[dict(msg["shares"][0], ct="AAAA")] + msg["shares"][1:])
    assert_rejected(h.server, h.server.receive_share_keys, json.dumps(bad).encode(), MalformedMessage, "malformed")


def test_server_refuses_a_replayed_share_keys_message():
    h = Harness(4)
    h.advertise()
    h.close_advertise()
    sent = h.share()
    assert_rejected(h.server, h.server.receive_share_keys, sent["org-2"], ReplayedMessage, "replay")
    h.close_share()
    assert_rejected(h.server, h.server.receive_share_keys, sent["org-2"], ReplayedMessage, "replay")


# ------------------------------------------------------------------ server side: MaskedInput


def test_server_refuses_masked_input_of_the_wrong_length():
    h = Harness(4, d=16).up_to("mask")
    body = h.clients["org-0"].masked_input(h.relays["org-0"], h.inputs["org-0"])
    assert_rejected(h.server, h.server.receive_masked_input, body[:-4], BadLength, "bad_length")
    assert_rejected(h.server, h.server.receive_masked_input, body + bytes(4), BadLength, "bad_length")
    assert_rejected(h.server, h.server.receive_masked_input, body[:-1], BadLength, "bad_length")
    h.server.receive_masked_input(body)


def test_server_refuses_a_masked_input_header_that_lies_about_d():
    h = Harness(4, d=16).up_to("mask")
    body = bytearray(h.clients["org-0"].masked_input(h.relays["org-0"], h.inputs["org-0"]))
    hlen = int.from_bytes(body[5:7], "big")
    header = bytes(body[7 : 7 + hlen]).replace(b'"d":16', b'"d":15')
    assert_rejected(h.server, h.server.receive_masked_input, bytes(body[:7] + header + body[7 + hlen :]), BadLength, "bad_length")


def test_server_refuses_a_replayed_masked_input_and_does_not_add_it_twice():
    h = Harness(4, d=16).up_to("mask")
    sent = h.mask()
    assert_rejected(h.server, h.server.receive_masked_input, sent["org-1"], ReplayedMessage, "replay")
    h.close_mask()
    h.unmask()
    np.testing.assert_array_equal(h.server.finalize().vector, modular_sum(h.inputs.values()))


def test_server_refuses_a_masked_input_from_a_party_that_did_not_share_keys():
    h = Harness(5, t=3, d=8)
    h.advertise()
    h.close_advertise()
    h.share(h.roster[:4])
    h.close_share()
    # org-4 is not in U2: forge its header onto org-0's body.
    body = h.clients["org-0"].masked_input(h.relays["org-0"], h.inputs["org-0"])
    forged = body.replace(b'"sender":"org-0"', b'"sender":"org-4"')
    assert_rejected(h.server, h.server.receive_masked_input, forged, NotAMember, "not_a_member")


def test_server_refuses_a_masked_input_that_arrives_after_its_sender_was_declared_a_dropout():
    # The privacy-critical case: the dropout's masking key is being reconstructed, so adding
    # its masked input now would let the server unmask it alone.
    h = Harness(5, t=3, d=8).up_to("mask")
    h.mask(h.roster[:4])
    late = h.clients["org-4"].masked_input(h.relays["org-4"], h.inputs["org-4"])
    h.close_mask()
    assert_rejected(h.server, h.server.receive_masked_input, late, WrongPhase, "wrong_phase")
    h.unmask()
    result = h.server.finalize()
    assert "org-4" in result.dropouts
    np.testing.assert_array_equal(result.vector, modular_sum(h.inputs[p] for p in h.roster[:4]))


def test_server_refuses_garbage_and_oversized_masked_inputs():
    h = Harness(3, d=8).up_to("mask")
    assert_rejected(h.server, h.server.receive_masked_input, b"XXXX\x01\x00\x00", MalformedMessage, "malformed")
    big = b"FGSA\x01" + bytes(max_body_bytes(h.config, "masked_input"))
    assert_rejected(h.server, h.server.receive_masked_input, big, MessageTooLarge, "too_large")


# ------------------------------------------------------------------ server side: Unmasking


def _with_block(msg: dict, key: str, shares: dict[str, bytes]) -> bytes:
    parties = list(shares)
    block = {"parties": parties, "shares": base64.b64encode(b"".join(shares[p] for p in parties)).decode()}
    return json.dumps(dict(msg, **{key: block})).encode()


def _block(msg: dict, key: str) -> dict[str, bytes]:
    raw = base64.b64decode(msg[key]["shares"])
    return {p: raw[66 * i : 66 * (i + 1)] for i, p in enumerate(msg[key]["parties"])}


def test_server_refuses_unmask_responses_from_non_survivors_and_for_both_secrets_of_a_party():
    h = Harness(5, t=3, d=8).up_to("mask")
    h.mask(h.roster[:4])
    h.close_mask()
    good = json.loads(h.clients["org-0"].unmask(h.request))
    b, s = _block(good, "b_shares"), _block(good, "s_shares")
    assert list(s) == ["org-4"] and len(b) == 4
    both = _with_block(good, "b_shares", {**b, "org-4": s["org-4"]})  # b_4 and s_4: would unmask org-4
    assert_rejected(h.server, h.server.receive_unmask_response, both, UnmaskConflict, "unmask_conflict")
    stranger = json.dumps(dict(good, sender="org-4")).encode()
    assert_rejected(h.server, h.server.receive_unmask_response, stranger, NotAMember, "not_a_member")
    outsider = _with_block(good, "s_shares", {"org-9": s["org-4"]})
    assert_rejected(h.server, h.server.receive_unmask_response, outsider, NotAMember, "not_a_member")
    missing = _with_block(good, "b_shares", dict(list(b.items())[1:]))
    assert_rejected(h.server, h.server.receive_unmask_response, missing, InconsistentView, "inconsistent")
    dup = json.loads(_with_block(good, "b_shares", b))
    dup["b_shares"]["parties"][1] = dup["b_shares"]["parties"][0]
    assert_rejected(h.server, h.server.receive_unmask_response, json.dumps(dup).encode(), DuplicateSender, "duplicate_sender")
    short = json.loads(_with_block(good, "b_shares", b))
    short["b_shares"]["shares"] = base64.b64encode(base64.b64decode(short["b_shares"]["shares"])[:-1]).decode()
    assert_rejected(h.server, h.server.receive_unmask_response, json.dumps(short).encode(), MalformedMessage, "malformed")
    not_field = _with_block(good, "b_shares", {**b, "org-0": b"\xff" * 66})
    assert_rejected(h.server, h.server.receive_unmask_response, not_field, MalformedMessage, "malformed")
    h.server.receive_unmask_response(json.dumps(good).encode())
    assert_rejected(h.server, h.server.receive_unmask_response, json.dumps(good).encode(), ReplayedMessage, "replay")
    h.unmask(h.roster[1:4])
    result = h.server.finalize()
    np.testing.assert_array_equal(result.vector, modular_sum(h.inputs[p] for p in h.roster[:4]))


def test_an_aborted_round_refuses_everything():
    h = Harness(4, t=3)
    h.advertise(h.roster[:2])
    with pytest.raises(TooFewSurvivors):
        h.close_advertise()
    late = h.clients["org-3"].advertise_keys()
    assert_rejected(h.server, h.server.receive_advertise_keys, late, RoundAborted, "aborted")
    with pytest.raises(RoundAborted):
        h.server.close_share_keys()


def test_closing_a_phase_out_of_turn_is_refused():
    h = Harness(3)
    with pytest.raises(WrongPhase):
        h.server.close_masked_input()
    with pytest.raises(WrongPhase):
        h.server.finalize()


# ------------------------------------------------------------------ client side


def test_client_refuses_a_key_list_with_a_bad_signature():
    h = Harness(4)
    h.advertise()
    key_list = json.loads(h.close_advertise())
    key_list["keys"][2]["s_pk"] = _flip_b64(key_list["keys"][2]["s_pk"], at=5)
    c = h.clients["org-0"]
    _assert_client_refuses(c, c.share_keys, json.dumps(key_list).encode(), BadSignature, "bad_signature")
    c.share_keys(h.key_list)  # the genuine list still works


def test_client_refuses_a_key_list_with_fewer_than_threshold_members():
    h = Harness(5, t=3)
    h.advertise()
    key_list = json.loads(h.close_advertise())
    key_list["keys"] = [k for k in key_list["keys"] if k["party"] in ("org-0", "org-1")]
    c = h.clients["org-0"]
    err = _assert_client_refuses(c, c.share_keys, json.dumps(key_list).encode(), TooFewSurvivors, "too_few_survivors")
    assert (err.survivors, err.threshold) == (2, 3)


def test_client_refuses_a_key_list_with_a_duplicate_or_unknown_member_or_without_itself():
    h = Harness(4)
    h.advertise()
    key_list = json.loads(h.close_advertise())
    c = h.clients["org-0"]
    k = key_list["keys"]
    dup = dict(key_list, keys=[k[0], k[1], k[1], k[3]])
    _assert_client_refuses(c, c.share_keys, json.dumps(dup).encode(), DuplicateSender, "duplicate_sender")
    unknown = dict(key_list, keys=k[:3] + [dict(k[3], party="org-9")])
    _assert_client_refuses(c, c.share_keys, json.dumps(unknown).encode(), NotAMember, "not_a_member")
    without_me = dict(key_list, keys=[k for k in key_list["keys"] if k["party"] != "org-0"])
    _assert_client_refuses(c, c.share_keys, json.dumps(without_me).encode(), InconsistentView, "inconsistent")


def test_client_refuses_messages_of_another_round_or_phase_and_replays():
    h = Harness(4)
    h.advertise()
    h.close_advertise()
    c = h.clients["org-0"]
    _assert_client_refuses(c, c.share_keys, tamper_json(h.key_list, round="round-2"), WrongRound, "wrong_round")
    _assert_client_refuses(c, c.unmask, h.key_list, WrongPhase, "wrong_phase")
    early_relay = {"v": 1, "type": "share_relay", "round": h.config.round_id, "recipient": "org-0", "shares": []}
    _assert_client_refuses(c, c.masked_input, json.dumps(early_relay).encode(), WrongPhase, "wrong_phase", h.inputs["org-0"])
    h.share()
    _assert_client_refuses(c, c.share_keys, h.key_list, ReplayedMessage, "replay")


def test_client_refuses_a_share_whose_ciphertext_does_not_verify():
    h = Harness(4).up_to("mask")
    c = h.clients["org-0"]
    relay = json.loads(h.relays["org-0"])
    relay["shares"][1]["ct"] = _flip_b64(relay["shares"][1]["ct"], at=40)
    _assert_client_refuses(c, c.masked_input, json.dumps(relay).encode(), BadCiphertext, "bad_ciphertext", h.inputs["org-0"])
    c.masked_input(h.relays["org-0"], h.inputs["org-0"])  # the genuine relay still works


def test_client_refuses_a_share_relayed_from_the_wrong_sender_or_to_the_wrong_recipient():
    h = Harness(4).up_to("mask")
    c = h.clients["org-0"]
    relay = json.loads(h.relays["org-0"])
    a, b = relay["shares"][0], relay["shares"][1]
    swapped = dict(relay, shares=[dict(a, ct=b["ct"]), dict(b, ct=a["ct"])] + relay["shares"][2:])
    _assert_client_refuses(c, c.masked_input, json.dumps(swapped).encode(), BadCiphertext, "bad_ciphertext", h.inputs["org-0"])
    other = h.relays["org-1"]
    _assert_client_refuses(c, c.masked_input, other, WrongRecipient, "wrong_recipient", h.inputs["org-0"])


def test_client_refuses_a_share_from_a_non_member_or_a_duplicate_sender():
    h = Harness(4).up_to("mask")
    c = h.clients["org-0"]
    relay = json.loads(h.relays["org-0"])
    outsider = dict(relay, shares=relay["shares"] + [dict(relay["shares"][0], **{"from": "org-9"})])
    _assert_client_refuses(c, c.masked_input, json.dumps(outsider).encode(), NotAMember, "not_a_member", h.inputs["org-0"])
    dup = dict(relay, shares=relay["shares"] + [relay["shares"][0]])
    _assert_client_refuses(c, c.masked_input, json.dumps(dup).encode(), DuplicateSender, "duplicate_sender", h.inputs["org-0"])


def test_client_refuses_an_input_of_the_wrong_length_or_type():
    h = Harness(4, d=16).up_to("mask")
    c = h.clients["org-0"]
    _assert_client_refuses(c, c.masked_input, h.relays["org-0"], BadLength, "bad_length", np.zeros(15, np.uint32))
    with pytest.raises(TypeError):
        c.masked_input(h.relays["org-0"], np.zeros(16, np.float32))


def test_client_refuses_an_unmask_request_asking_for_both_secrets_of_a_party():
    h = Harness(5, t=3).up_to("mask")
    h.mask()
    req = json.loads(h.close_mask())
    c = h.clients["org-0"]
    both = dict(req, dropouts=["org-4"])  # org-4 is also in survivors
    _assert_client_refuses(c, c.unmask, json.dumps(both).encode(), UnmaskConflict, "unmask_conflict")


def test_client_refuses_an_unmask_request_with_too_few_survivors_or_unknown_parties():
    h = Harness(5, t=3).up_to("mask")
    h.mask()
    req = json.loads(h.close_mask())
    c = h.clients["org-0"]
    few = dict(req, survivors=["org-0", "org-1"], dropouts=["org-2", "org-3", "org-4"])
    _assert_client_refuses(c, c.unmask, json.dumps(few).encode(), TooFewSurvivors, "too_few_survivors")
    stranger = dict(req, survivors=req["survivors"][:-1] + ["org-9"])
    _assert_client_refuses(c, c.unmask, json.dumps(stranger).encode(), NotAMember, "not_a_member")
    partial = dict(req, survivors=req["survivors"][:-1])  # org-4 neither survivor nor dropout
    _assert_client_refuses(c, c.unmask, json.dumps(partial).encode(), InconsistentView, "inconsistent")


def test_client_answers_unmasking_only_once():
    h = Harness(5, t=3).up_to("mask")
    h.mask()
    req = json.loads(h.close_mask())
    c = h.clients["org-0"]
    c.unmask(json.dumps(req).encode())
    # A second request (say, now claiming org-4 dropped) is refused: it would reveal both secrets.
    second = dict(req, survivors=[p for p in req["survivors"] if p != "org-4"], dropouts=["org-4"])
    with pytest.raises(ReplayedMessage):
        c.unmask(json.dumps(second).encode())


def test_client_steps_refuse_to_run_twice():
    h = Harness(3)
    c = h.clients["org-0"]
    c.advertise_keys()
    with pytest.raises(WrongPhase):
        c.advertise_keys()


# ------------------------------------------------------------------ the round goes on


def test_rejected_messages_do_not_break_the_round_for_the_others():
    h = Harness(5, t=3, d=32)
    h.advertise()
    for bad in (
        b"{}",
        b"junk",
        tamper_json(h.sent["advertise"]["org-1"], sig=_flip_b64(json.loads(h.sent["advertise"]["org-1"])["sig"])),
    ):
        with pytest.raises(SecAggError):
            h.server.receive_advertise_keys(bad)
    h.close_advertise()
    h.share()
    with pytest.raises(SecAggError):
        h.server.receive_share_keys(h.sent["share"]["org-2"])
    h.close_share()
    sent = h.mask()
    for bad in (sent["org-3"], sent["org-3"][:-8], b"FGSA"):
        with pytest.raises(SecAggError):
            h.server.receive_masked_input(bad)
    h.close_mask()
    h.unmask()
    with pytest.raises(SecAggError):
        h.server.receive_unmask_response(h.sent["unmask"]["org-0"])
    np.testing.assert_array_equal(h.server.finalize().vector, modular_sum(h.inputs.values()))


def _mutations(body: bytes, rng: np.random.Generator, count: int):
    for _ in range(count):
        b = bytearray(body)
        kind = rng.integers(0, 4)
        i = int(rng.integers(0, len(b)))
        if kind == 0:
            b[i] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            del b[i:]
        elif kind == 2:
            b[i:i] = bytes(rng.integers(0, 256, int(rng.integers(1, 5)), dtype=np.uint8))
        else:
            b[i] = int(rng.choice(list(b'{}[]",:0')))
        yield bytes(b)


def test_mutated_messages_only_ever_raise_secagg_errors_and_leave_the_server_unchanged():
    rng = np.random.default_rng(2024)
    h = Harness(4, t=3, d=8)
    others, last = list(h.roster[:3]), h.roster[3]
    steps = [
        (h.advertise, lambda: h.clients[last].advertise_keys(), h.server.receive_advertise_keys, h.close_advertise),
        (h.share, lambda: h.clients[last].share_keys(h.key_list), h.server.receive_share_keys, h.close_share),
        (
            h.mask,
            lambda: h.clients[last].masked_input(h.relays[last], h.inputs[last]),
            h.server.receive_masked_input,
            h.close_mask,
        ),
        (h.unmask, lambda: h.clients[last].unmask(h.request), h.server.receive_unmask_response, None),
    ]
    for send_others, make_last, receive, close in steps:
        send_others(others)
        genuine = make_last()
        for mutated in _mutations(genuine, rng, 150):
            server = h.server
            state, acc = server.to_bytes(), server.running_sum_bytes()
            try:
                getattr(server, receive.__name__)(mutated)
            except SecAggError:
                assert (server.to_bytes(), server.running_sum_bytes()) == (state, acc)
            else:  # still a valid message (e.g. a flipped ciphertext the server cannot check): undo
                h.server = SecAggServer.from_bytes(state, running_sum=acc)
        getattr(h.server, receive.__name__)(genuine)
        if close:
            close()
    np.testing.assert_array_equal(h.server.finalize().vector, modular_sum(h.inputs.values()))
