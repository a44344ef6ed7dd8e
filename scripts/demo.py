"""`make demo`, against a running `make run`: the seeds' story of cross-province family mutual aid.

A giver insured in Hami (Xinjiang 650000, employee insurance) binds himself to his mother insured in
Lanzhou (Gansu 620000, resident insurance) — she consents with her own face — is refused an in-law,
binds his daughter under 16 with a guardian's attestation, then sends his mother 500.00 yuan. The
demo drives Xinjiang's stub platform, follows the transfer through the gateway, shows both
provinces' view, resends the instruction unchanged (a replay) and modified (refused). Then step 4 of the
Hami seed, the 2026 quota regime (scripts/demo_quota.py): he grants his mother a quota frozen on his
personal account, she pays a pharmacy bill own account first and the quota the rest, a drug is returned,
the operator closes the month's clearing, and the binding is dissolved, releasing what is unused; each
step shows what each province was told. It dissolves the bindings it made so it can run again. Last,
the operator closes the settlement window: each province's position is printed, both provinces
acknowledge their signed figures, and the operator records the bank payment (D16-D18). ID numbers are
shown masked only (D19).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC
from pathlib import Path

import grpc

from gateway.addresses import DEFAULT_OPS_LISTEN
from gateway.domain.clock import BEIJING
from gateway.domain.identity import mask_id_number
from gateway.security.tls import GATEWAY_DNS, province_dns
from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import operations_pb2, operations_pb2_grpc, relations_pb2, settlements_pb2, transfers_pb2
from scripts.demo_quota import QuotaStory
from scripts.devtls import channel_as

# The stubs' control services (make run puts them on loopback ports of their own, beside their inboxes).
XINJIANG = os.environ.get("GONGJI_STUB_650000_CONTROL", "127.0.0.1:50071")
GANSU = os.environ.get("GONGJI_STUB_620000_CONTROL", "127.0.0.1:50072")
# The operators' port: as the CLI names it, else as the gateway was told to listen.
OPS = os.environ.get("GONGJI_OPS") or os.environ.get("GONGJI_OPS_LISTEN", DEFAULT_OPS_LISTEN)
GIVER_ID = "650502199001011230"  # Hami 650500, employee insurance (310), born 1990
MOTHER_ID, LANZHOU = "620102196505120026", "620100"  # resident insurance (390), born 1965
IN_LAW_ID = "620103198203040034"  # a Gansu employee, born 1982: a son-in-law is not eligible (D4)
DAUGHTER_ID = "620102201508160027"  # born 2015: under 16, so a guardian attests (D6)
AMOUNT_FEN = 50_000
TIMEOUT_S = 20.0
# `make run` serves mutual TLS from a development CA under var/tls/ (plaintext only when told).
TLS = Path(os.environ.get("GONGJI_VAR", Path(__file__).resolve().parents[1] / "var")) / "tls"
TLS_DIR = None if (not (TLS / "ca.crt").exists()
                   or os.environ.get("GONGJI_INSECURE_DEV_PLAINTEXT", "").lower() == "true") else TLS


def state_name(state: transfers_pb2.TransferState.ValueType) -> str:
    return transfers_pb2.TransferState.Name(state).removeprefix("TRANSFER_STATE_")


def binding_state(state: relations_pb2.BindingState.ValueType) -> str:
    return relations_pb2.BindingState.Name(state).removeprefix("BINDING_STATE_")


class Demo:
    def __init__(self, xinjiang: control_pb2_grpc.StubControlStub, gansu: control_pb2_grpc.StubControlStub) -> None:
        self.xinjiang, self.gansu = xinjiang, gansu

    def propose(self, receiver_id: str, relation_code: str) -> control_pb2.StubCallResponse:
        return self.xinjiang.ProposeBinding(control_pb2.StubProposeRequest(
            giver_id_number=GIVER_ID, receiver_id_number=receiver_id, receiver_pooling_area=LANZHOU,
            receiver_province="620000", relation_code=relation_code), timeout=15)

    def wait_binding(self, binding_id: str) -> relations_pb2.BindingView:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            view = self.xinjiang.QueryBinding(control_pb2.QueryBindingRequest(binding_id=binding_id), timeout=5).binding
            if view.state != relations_pb2.BINDING_STATE_PROPOSED or time.monotonic() > deadline:
                return view
            time.sleep(0.1)

    def bind(self, who: str, receiver_id: str, relation_code: str) -> str | None:
        answer = self.propose(receiver_id, relation_code)
        if answer.code != "OK":
            print(f"   {who}: refused, {answer.code} {answer.reason}")
            return None
        view = self.wait_binding(answer.subject_id)
        method = relations_pb2.AttestationMethod.Name(view.attestation_method).removeprefix("ATTESTATION_METHOD_")
        print(f"   {who}: binding {answer.subject_id} {binding_state(view.state)}, consent by {method}, "
              f"{view.giver_id_masked} -> {view.receiver_id_masked}")
        return answer.subject_id if view.state == relations_pb2.BINDING_STATE_ACTIVE else None


def main() -> int:
    with channel_as(XINJIANG, province_dns("650000"), TLS_DIR) as xj_channel, \
            channel_as(GANSU, province_dns("620000"), TLS_DIR) as gs_channel:
        xinjiang = control_pb2_grpc.StubControlStub(xj_channel)
        gansu = control_pb2_grpc.StubControlStub(gs_channel)
        try:
            grpc.channel_ready_future(xj_channel).result(timeout=3)
        except grpc.FutureTimeoutError:
            print(f"make demo: nothing answers on {XINJIANG}; start `make run` first.", file=sys.stderr)
            return 1
        demo = Demo(xinjiang, gansu)

        print(f"1. Family relations: giver {mask_id_number(GIVER_ID)} (Hami, Xinjiang 650000) proposes, Gansu 620000 "
              "asks the relative to consent:")
        mother_binding = demo.bind(f"his mother {mask_id_number(MOTHER_ID)} (code 52)", MOTHER_ID, "52")
        demo.bind(f"an in-law {mask_id_number(IN_LAW_ID)} (code 28, son-in-law)", IN_LAW_ID, "28")
        daughter_binding = demo.bind(f"his daughter {mask_id_number(DAUGHTER_ID)}, under 16 (code 30)", DAUGHTER_ID,
                                     "30")
        if mother_binding is None:
            print("   the binding with his mother is not ACTIVE; is an earlier demo's binding still there?",
                  file=sys.stderr)
            return 1

        print(f"2. Xinjiang's platform submits a signed transfer to his mother: {AMOUNT_FEN / 100:.2f} yuan")
        answer = xinjiang.SubmitTransfer(control_pb2.StubSubmitRequest(
            giver_id_number=GIVER_ID, receiver_id_number=MOTHER_ID, receiver_pooling_area=LANZHOU,
            receiver_province="620000", amount_fen=AMOUNT_FEN, binding_id=mother_binding), timeout=10)
        if answer.code != "OK":
            print(f"   refused: {answer.code} {answer.reason}", file=sys.stderr)
            return 1
        transfer_id = answer.transfer_id
        print(f"   gateway receipt: transfer {transfer_id}, state {state_name(answer.state)}, "
              f"signature verified: {answer.receipt_verified}")

        print("3. The transfer moves through the gateway:")
        seen: list[transfers_pb2.TransferState.ValueType] = []
        deadline = time.monotonic() + TIMEOUT_S
        view = None
        while time.monotonic() < deadline:
            view = xinjiang.QueryTransfer(control_pb2.QueryTransferRequest(transfer_id=transfer_id), timeout=5).transfer
            for event in view.history:
                if event.state not in seen:
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

        print("4. Both provinces' view:")
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

        print("5. Xinjiang resends the very same instruction (e.g. after a lost answer):")
        again = xinjiang.Resubmit(control_pb2.ResubmitRequest(transfer_id=transfer_id), timeout=10)
        same = again.receipt_sha256 == answer.receipt_sha256
        print(f"   {again.code}: replay={again.replay}, same receipt as the first answer: {same}")

        print("6. Xinjiang resends it modified (amount + 1 fen) under the same id:")
        modified = xinjiang.Resubmit(control_pb2.ResubmitRequest(transfer_id=transfer_id, modify=True), timeout=10)
        print(f"   refused: {modified.code} {modified.reason}")

        quota_told = tell_the_quota_story(xinjiang, gansu, mother_binding)

        print("12. Cleaning up: Xinjiang dissolves the demo's other bindings (Gansu allows one relation at a time):")
        for binding_id in (b for b in (None if quota_told else mother_binding, daughter_binding) if b):
            dissolved = xinjiang.DissolveBinding(control_pb2.StubDissolveRequest(binding_id=binding_id,
                                                                                 reason="DEMO_FINISHED"), timeout=10)
            print(f"   binding {binding_id}: {dissolved.code} {dissolved.state}")
        ok = again.replay and same and modified.code == "ALREADY_EXISTS" and modified.reason == "MODIFIED_REQUEST"
        ok = ok and quota_told
        try:
            ok = settle(transfer_id, xinjiang, gansu) and ok
        except grpc.RpcError as error:
            print(f"   the operators' port {OPS} answered {error.code().name}: {error.details()}", file=sys.stderr)
            ok = False
        print("\ndemo complete." if ok else "\ndemo finished with unexpected answers.")
        return 0 if ok else 1


def beijing_today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() + 8 * 3600))


def tell_the_quota_story(xinjiang: control_pb2_grpc.StubControlStub, gansu: control_pb2_grpc.StubControlStub,
                         binding_id: str) -> bool:
    """Steps 7-11 (scripts/demo_quota.py); True once the binding was dissolved with everything as expected."""
    story = QuotaStory(xinjiang, gansu, GIVER_ID, MOTHER_ID, mask_id_number)
    try:
        with channel_as(OPS, GATEWAY_DNS, TLS_DIR) as ops_channel:
            return story.run(binding_id, operations_pb2_grpc.OperationsStub(ops_channel), beijing_today())
    except grpc.RpcError as error:
        print(f"   the quota story stopped: {error.code().name}: {error.details()}", file=sys.stderr)
        return False


def yuan(fen: int) -> str:
    return f"{fen / 100:,.2f} yuan"


def window_state(state: settlements_pb2.SettlementWindowState.ValueType) -> str:
    return settlements_pb2.SettlementWindowState.Name(state).removeprefix("SETTLEMENT_WINDOW_STATE_")


def acknowledgement_answer(window_state_after: str) -> str:
    """What the gateway's answer to one province's acknowledgement means for the window."""
    if not window_state_after:
        return "no answer from the gateway yet"
    if window_state_after == "CLOSED":
        return "window still CLOSED (the first acknowledgement: the other province's to come)"
    return f"window now {window_state_after}"


def settle(transfer_id: str, xinjiang: control_pb2_grpc.StubControlStub,
           gansu: control_pb2_grpc.StubControlStub) -> bool:
    """Step 13: the operator closes the window the transfer committed into; the provinces agree; payment."""
    with channel_as(OPS, GATEWAY_DNS, TLS_DIR) as ops_channel:
        ops = operations_pb2_grpc.OperationsStub(ops_channel)
        window_id = xinjiang.QueryTransfer(control_pb2.QueryTransferRequest(transfer_id=transfer_id),
                                           timeout=5).transfer.settlement_window_id
        today = beijing_today()
        if window_id > today[:len(window_id)]:
            # An earlier run closed today's window, so today's commits go to the next one (D16), which cannot be
            # closed before it starts: it closes on schedule once it has ended.
            print(f"13. The transfer committed into settlement window {window_id} (today's was closed by an earlier "
                  "run): it has not started, so it is closed on schedule after it ends, not now.")
            return True
        print(f"13. The operator closes settlement window {window_id} (the transfer committed into it):")
        window = ops.CloseSettlementWindow(operations_pb2.CloseSettlementWindowRequest(window_id=window_id),
                                           timeout=10).window
        for pair in window.pairs:
            print(f"   owed {pair.from_province} -> {pair.to_province}: {yuan(pair.gross_fen)} "
                  f"in {pair.transfer_count} transfer(s)")
        for position in window.positions:
            side = "receives" if position.net_fen >= 0 else "pays"
            print(f"   position of {position.province}: {side} {yuan(abs(position.net_fen))}")
        print(f"   net positions sum to {yuan(sum(p.net_fen for p in window.positions))}; "
              f"window {window_state(window.state)}, signed figures sent to {', '.join(window.provinces)}")
        deadline = time.monotonic() + TIMEOUT_S
        while window.state == settlements_pb2.SETTLEMENT_WINDOW_STATE_CLOSED and time.monotonic() < deadline:
            time.sleep(0.1)
            window = ops.GetSettlementWindow(operations_pb2.GetSettlementWindowRequest(window_id=window_id),
                                             timeout=5).window
        for name, stub in (("Xinjiang 650000", xinjiang), ("Gansu 620000", gansu)):
            received = [r for r in stub.Snapshot(control_pb2.SnapshotRequest(), timeout=5).settlements
                        if r.window_id == window_id]
            for r in received:
                print(f"   {name} acknowledged figures sha256 {r.figures_sha256.hex()[:16]}..., "
                      f"its position {yuan(r.net_fen)}; {acknowledgement_answer(r.acknowledged_state)}")
        print(f"   window {window_state(window.state)}; acknowledged by {', '.join(window.acknowledged_by)}")
        if window.state != settlements_pb2.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED:
            print("   not every province acknowledged in time", file=sys.stderr)
            return False
        payments = [operations_pb2.PaymentRecord(from_province=p.from_province, to_province=p.to_province,
                                                 bank="PBOC", serial_number=f"DEMO-{window_id}-{i + 1}",
                                                 date=today) for i, p in enumerate(window.pairs)]
        window = ops.RecordSettlementPayment(operations_pb2.RecordSettlementPaymentRequest(
            window_id=window_id, payments=payments), timeout=10).window
        print(f"   payment references recorded: window {window_state(window.state)}")
        return window.state == settlements_pb2.SETTLEMENT_WINDOW_STATE_SETTLED


def _wait_told(stub: control_pb2_grpc.StubControlStub, transfer_id: str) -> control_pb2.SnapshotResponse:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        snapshot = stub.Snapshot(control_pb2.SnapshotRequest(), timeout=5)
        if any(n.transfer_id == transfer_id for n in snapshot.notifications) or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
