"""`make demo`, against a running `make run`: the seeds' story of one cross-province transfer.

A giver insured in Hami (Xinjiang 650000, employee insurance) sends 500.00 yuan to his mother insured
in Lanzhou (Gansu 620000, resident insurance). The demo drives Xinjiang's stub platform to submit,
follows the transfer through the gateway, shows both provinces' view, then resends the instruction
unchanged (a replay) and modified (refused). ID numbers are shown masked only (D19).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC
from zoneinfo import ZoneInfo

import grpc

from protos.gongji.v1 import transfers_pb2
from protos.stub.v1 import control_pb2, control_pb2_grpc

XINJIANG = os.environ.get("GONGJI_STUB_650000", "127.0.0.1:50061")
GANSU = os.environ.get("GONGJI_STUB_620000", "127.0.0.1:50062")
GIVER_ID = "650502199001011230"  # Hami 650500, employee insurance (310)
MOTHER_ID, MOTHER_AREA = "620102196505120026", "620100"  # Lanzhou, resident insurance (390)
AMOUNT_FEN = 50_000
TIMEOUT_S = 20.0
BEIJING = ZoneInfo("Asia/Shanghai")


def mask(id_number: str) -> str:
    return id_number[:6] + "*" * 8 + id_number[-4:]


def state_name(state: transfers_pb2.TransferState.ValueType) -> str:
    return transfers_pb2.TransferState.Name(state).removeprefix("TRANSFER_STATE_")


def main() -> int:
    with grpc.insecure_channel(XINJIANG) as xj_channel, grpc.insecure_channel(GANSU) as gs_channel:
        xinjiang = control_pb2_grpc.StubControlStub(xj_channel)
        gansu = control_pb2_grpc.StubControlStub(gs_channel)
        try:
            grpc.channel_ready_future(xj_channel).result(timeout=3)
        except grpc.FutureTimeoutError:
            print(f"make demo: nothing answers on {XINJIANG}; start `make run` first.", file=sys.stderr)
            return 1

        print(f"1. Xinjiang's platform submits a signed transfer: giver {mask(GIVER_ID)} (Hami 650500) -> "
              f"his mother {mask(MOTHER_ID)} (Lanzhou {MOTHER_AREA}, Gansu 620000), "
              f"{AMOUNT_FEN / 100:.2f} yuan")
        answer = xinjiang.SubmitTransfer(control_pb2.StubSubmitRequest(
            giver_id_number=GIVER_ID, receiver_id_number=MOTHER_ID, receiver_pooling_area=MOTHER_AREA,
            receiver_province="620000", amount_fen=AMOUNT_FEN), timeout=10)
        if answer.code != "OK":
            print(f"   refused: {answer.code} {answer.reason}", file=sys.stderr)
            return 1
        transfer_id = answer.transfer_id
        print(f"   gateway receipt: transfer {transfer_id}, state {state_name(answer.state)}, "
              f"signature verified: {answer.receipt_verified}")

        print("2. The transfer moves through the gateway:")
        seen: list[transfers_pb2.TransferState.ValueType] = []
        deadline = time.monotonic() + TIMEOUT_S
        view = None
        while time.monotonic() < deadline:
            view = xinjiang.QueryTransfer(control_pb2.QueryTransferRequest(transfer_id=transfer_id), timeout=5).transfer
            for event in view.history:
                if len(seen) < len(view.history) and event.state not in seen:
                    seen.append(event.state)
                    at = event.at.ToDatetime(tzinfo=UTC).astimezone(BEIJING)
                    print(f"   {state_name(event.state):<10} at {at:%H:%M:%S.%f}"[:-3] + " Beijing time")
            if view.state == transfers_pb2.TRANSFER_STATE_COMMITTED:
                break
            time.sleep(0.1)
        if view is None or view.state != transfers_pb2.TRANSFER_STATE_COMMITTED:
            print("   the transfer did not reach COMMITTED in time", file=sys.stderr)
            return 1
        print("   path: " + " -> ".join(state_name(s) for s in seen))

        print("3. Both provinces' view:")
        for name, stub in (("Xinjiang 650000 (giver's side)", xinjiang), ("Gansu 620000 (receiver's side)", gansu)):
            snapshot = _wait_told(stub, transfer_id)
            gateway_view = stub.QueryTransfer(control_pb2.QueryTransferRequest(transfer_id=transfer_id),
                                              timeout=5).transfer
            told = [f"{state_name(n.state)} (told {n.times_received}x)" for n in snapshot.notifications
                    if n.transfer_id == transfer_id]
            credits = [f"{c.amount_fen / 100:.2f} yuan {c.status}" for c in snapshot.credits
                       if c.transfer_id == transfer_id]
            print(f"   {name}: gateway says {state_name(gateway_view.state)}, "
                  f"{gateway_view.giver_id_masked} -> {gateway_view.receiver_id_masked}; outcome told: "
                  f"{', '.join(told) or 'not yet'}" + (f"; credit: {', '.join(credits)}" if credits else ""))

        print("4. Xinjiang resends the very same instruction (e.g. after a lost answer):")
        again = xinjiang.Resubmit(control_pb2.ResubmitRequest(transfer_id=transfer_id), timeout=10)
        same = again.receipt_sha256 == answer.receipt_sha256
        print(f"   {again.code}: replay={again.replay}, same receipt as the first answer: {same}")

        print("5. Xinjiang resends it modified (amount + 1 fen) under the same id:")
        modified = xinjiang.Resubmit(control_pb2.ResubmitRequest(transfer_id=transfer_id, modify=True), timeout=10)
        print(f"   refused: {modified.code} {modified.reason}")
        ok = again.replay and same and modified.code == "ALREADY_EXISTS" and modified.reason == "MODIFIED_REQUEST"
        print("\ndemo complete." if ok else "\ndemo finished with unexpected answers.")
        return 0 if ok else 1


def _wait_told(stub: control_pb2_grpc.StubControlStub, transfer_id: str) -> control_pb2.SnapshotResponse:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        snapshot = stub.Snapshot(control_pb2.SnapshotRequest(), timeout=5)
        if any(n.transfer_id == transfer_id for n in snapshot.notifications) or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
