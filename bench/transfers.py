"""The transfer driver's requests: Xinjiang's platform signing fresh TransferInstructions."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from protos.gongji.v1 import common_pb2, transfers_pb2
from province_stub.answers import read_receipt
from province_stub.messages import build_instruction_envelope, new_transfer_id
from province_stub.signing import PublicKeyStore, load_private_key

SUBMIT_METHOD = "/gongji.v1.Transfers/SubmitTransfer"
XINJIANG, GANSU = "650000", "620000"
XINJIANG_KEY_ID = f"{XINJIANG}-k1"
# The seeds' pair: a Hami employee giving to his mother insured in Lanzhou.
GIVER = common_pb2.PersonRef(id_number="650502199001011230", pooling_area="650500")
RECEIVER = common_pb2.PersonRef(id_number="620102196505120026", pooling_area="620100")
AMOUNT_FEN = 100


@dataclass(frozen=True)
class Pair:
    """A giver and a receiver with their ACTIVE binding."""

    binding_id: str
    giver: common_pb2.PersonRef
    receiver: common_pb2.PersonRef


class TransferSource:
    """Builds and signs one new instruction per call (unique transfer_id, created_at = now), naming `pairs` in turn
    (else the seeds' pair on `binding_id`)."""

    def __init__(self, keys_dir: Path, binding_id: str, *, keep_payloads: bool = False,
                 pairs: Sequence[Pair] = ()) -> None:
        self._binding_id = binding_id
        self._pairs = itertools.cycle(pairs or [Pair(binding_id, GIVER, RECEIVER)])
        self._private_key = load_private_key(keys_dir / f"{XINJIANG_KEY_ID}.key")
        self._keys = PublicKeyStore(keys_dir)
        self.submitted: list[str] = []
        # Only while warming up: the payloads let every receipt be verified against its request.
        self.keep_payloads = keep_payloads
        self._payloads: dict[str, bytes] = {}

    @property
    def binding_id(self) -> str:
        """The ACTIVE binding the transfers name (the consumption phase draws on its quota)."""
        return self._binding_id

    def sample_request(self) -> transfers_pb2.SubmitTransferRequest:
        """A request like every submitted one, but never sent to the gateway (the echo's payload)."""
        return self._build(new_transfer_id(XINJIANG))[1]

    def next_request(self) -> tuple[str, transfers_pb2.SubmitTransferRequest]:
        transfer_id = new_transfer_id(XINJIANG)
        self.submitted.append(transfer_id)
        return self._build(transfer_id)

    def _build(self, transfer_id: str) -> tuple[str, transfers_pb2.SubmitTransferRequest]:
        pair = next(self._pairs)
        envelope = build_instruction_envelope(
            XINJIANG, XINJIANG_KEY_ID, self._private_key, transfer_id, pair.giver, pair.receiver, GANSU, AMOUNT_FEN,
            binding_id=pair.binding_id,
        )
        if self.keep_payloads:
            self._payloads[transfer_id] = envelope.payload
        return transfer_id, transfers_pb2.SubmitTransferRequest(instruction=envelope)

    def check(self, answer: transfers_pb2.SubmitTransferResponse) -> str:
        """"OK" for a first acceptance (RECEIVED, not a replay, receipt signed by the gateway)."""
        if answer.replay:
            return "REPLAY"
        if answer.state != transfers_pb2.TRANSFER_STATE_RECEIVED:
            return f"STATE_{transfers_pb2.TransferState.Name(answer.state)}"
        if answer.receipt.signer != "gateway" or not answer.receipt.signature:
            return "NO_RECEIPT"
        payload = self._payloads.get(answer.transfer_id)
        # Full verification costs an Ed25519 check on the driver's CPU, so only warm-up pays it.
        if payload is not None and read_receipt(self._keys, answer.receipt, payload) is None:
            return "BAD_RECEIPT"
        return "OK"
