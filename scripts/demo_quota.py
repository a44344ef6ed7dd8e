"""`make demo`'s second part: step 4 of the Hami seed, the 2026 quota regime (domain.md Q1-Q13).

The son in Hami (Xinjiang 650000) grants his mother in Lanzhou (Gansu 620000) a 1,000.00 yuan quota, frozen on
his personal account; she buys medicine for 300.00 yuan, her own account pays 120.00 and the quota 180.00; a
50.00 yuan drug is returned; the operator closes the month's clearing; the binding is dissolved and the unused
870.00 yuan goes back to him. After each step, what each province was told, from the stubs' ledgers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from protos.gongji.stub.v1 import control_pb2, control_pb2_grpc
from protos.gongji.v1 import common_pb2, operations_pb2, operations_pb2_grpc, province_pb2, quotas_pb2, settlements_pb2

SON_BALANCE_FEN = 500_000
MOTHER_BALANCE_FEN = 12_000
QUOTA_FEN = 100_000
BILL_FEN = 30_000
RETURNED_FEN = 5_000
TIMEOUT_S = 20.0


def yuan(fen: int) -> str:
    return f"{fen / 100:,.2f}"


def change_name(change: province_pb2.QuotaChange.ValueType) -> str:
    return province_pb2.QuotaChange.Name(change).removeprefix("QUOTA_CHANGE_")


def figures_line(q: common_pb2.QuotaFigures) -> str:
    return (f"granted {yuan(q.granted_fen)}, consumed {yuan(q.consumed_fen)}, released {yuan(q.released_fen)}, "
            f"available {yuan(q.available_fen)}")


@dataclass
class Province:
    """One stub province as the demo follows it: its control service and the notices already shown."""

    name: str
    control: control_pb2_grpc.StubControlStub
    shown: set[str] = field(default_factory=set)

    def ledger(self) -> control_pb2.LedgerResponse:
        return self.control.Ledger(control_pb2.LedgerRequest(), timeout=5)

    def new_notices(self, binding_id: str) -> list[str]:
        """What this province was told about the binding since last asked, one short line each."""
        ledger, told = self.ledger(), []
        for q in ledger.quota_notices:
            if q.binding_id == binding_id and q.message_id not in self.shown:
                self.shown.add(q.message_id)
                told.append(f"quota {change_name(q.change)} {yuan(q.amount_fen)} yuan"
                            + (f" (released to the giver {yuan(q.released_fen)})" if q.released_fen else "")
                            + f", available now {yuan(q.quota.available_fen)}")
        for c in ledger.consumption_notices:
            if c.binding_id == binding_id and c.message_id not in self.shown:
                self.shown.add(c.message_id)
                told.append(f"consumption {change_name(c.change)} {yuan(c.amount_fen)} yuan "
                            f"(settlement {c.settlement_ref}, month {c.clearing_window_id})")
        return told


class QuotaStory:
    """Steps 7-11 of `make demo`."""

    def __init__(self, xinjiang: control_pb2_grpc.StubControlStub, gansu: control_pb2_grpc.StubControlStub,
                 son_id: str, mother_id: str, masked: Callable[[str], str]) -> None:
        self.xinjiang = Province("Xinjiang 650000", xinjiang)
        self.gansu = Province("Gansu 620000", gansu)
        self.son_id, self.mother_id, self.masked = son_id, mother_id, masked
        self.ok = True

    def fail(self, message: str) -> None:
        print(f"   {message}", file=sys.stderr)
        self.ok = False

    def son_account(self, binding_id: str) -> str:
        ledger = self.xinjiang.ledger()
        account = next((a for a in ledger.accounts if a.id_number == self.son_id), None)
        given = next((g for g in ledger.given if g.binding_id == binding_id), None)
        if account is None:
            return "no account"
        return (f"his account {yuan(account.balance_fen)}, frozen {yuan(account.frozen_fen)}, "
                f"debited for her {yuan(given.debited_fen if given else 0)}")

    def told(self, binding_id: str, expected: dict[str, int]) -> None:
        """Print what each province was told, once `expected` notices per province arrived (or in time)."""
        seen: dict[str, list[str]] = {p.name: [] for p in (self.xinjiang, self.gansu)}
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for province in (self.xinjiang, self.gansu):
                seen[province.name] += province.new_notices(binding_id)
            if all(len(seen[name]) >= count for name, count in expected.items()) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for province in (self.xinjiang, self.gansu):
            lines = seen[province.name] or ["nothing"]
            suffix = f"; {self.son_account(binding_id)}" if province is self.xinjiang else ""
            print(f"   {province.name} was told: {'; '.join(lines)}{suffix}")
            if len(seen[province.name]) < expected.get(province.name, 0):
                self.fail(f"{province.name} was not told everything in time")

    def run(self, binding_id: str, ops: operations_pb2_grpc.OperationsStub, today: str) -> bool:
        print(f"7. The 2026 quota regime (step 4 of the Hami seed), on the binding with his mother {binding_id}:")
        self.xinjiang.control.SetAccount(control_pb2.SetAccountRequest(id_number=self.son_id,
                                                                      balance_fen=SON_BALANCE_FEN), timeout=5)
        self.gansu.control.SetAccount(control_pb2.SetAccountRequest(id_number=self.mother_id,
                                                                   balance_fen=MOTHER_BALANCE_FEN), timeout=5)
        print(f"   personal accounts: {self.masked(self.son_id)} {yuan(SON_BALANCE_FEN)} yuan in Hami, "
              f"{self.masked(self.mother_id)} {yuan(MOTHER_BALANCE_FEN)} yuan in Lanzhou")
        for province in (self.xinjiang, self.gansu):
            province.new_notices(binding_id)  # nothing yet; anything earlier is not this story's

        print(f"   Xinjiang freezes {yuan(QUOTA_FEN)} yuan of his account and grants her a {yuan(QUOTA_FEN)} yuan "
              "quota:")
        grant = self.xinjiang.control.GrantQuota(control_pb2.StubGrantRequest(
            binding_id=binding_id, giver_id_number=self.son_id, quota_fen=QUOTA_FEN), timeout=15)
        if grant.code != "OK":
            self.fail(f"refused: {grant.code} {grant.reason}"
                      + (" (the gateway does not serve gongji.v1.Quotas)" if grant.code == "UNIMPLEMENTED" else ""))
            return False
        print(f"   gateway: OK, receipt verified: {grant.receipt_verified}; {figures_line(grant.quota)}")
        self.told(binding_id, {"Gansu 620000": 1})

        print(f"8. She buys medicine for {yuan(BILL_FEN)} yuan at a Lanzhou pharmacy (620100):")
        bill = self.gansu.control.SettleBill(control_pb2.SettleBillRequest(
            id_number=self.mother_id, binding_id=binding_id, amount_fen=BILL_FEN,
            kind=quotas_pb2.CONSUMPTION_KIND_PHARMACY, care_pooling_area="620100"), timeout=15)
        print(f"   her own account pays {yuan(bill.own_account_fen)}, the quota {yuan(bill.drawn_fen)}, "
              f"she pays {yuan(bill.owed_fen)} herself (settlement {bill.settlement_ref})")
        if bill.code != "OK":
            self.fail(f"the draw was refused: {bill.code} {bill.reason}")
            return False
        print(f"   gateway: OK, month {bill.clearing_window_id}; {figures_line(bill.quota)}")
        self.told(binding_id, {"Xinjiang 650000": 1, "Gansu 620000": 1})

        print(f"9. A {yuan(RETURNED_FEN)} yuan drug is returned: Gansu reverses that much of the settlement:")
        reversal = self.gansu.control.ReverseBill(control_pb2.ReverseBillRequest(
            settlement_ref=bill.settlement_ref, amount_fen=RETURNED_FEN, reason="DRUG_RETURNED"), timeout=15)
        if reversal.code != "OK":
            self.fail(f"refused: {reversal.code} {reversal.reason}")
            return False
        state = quotas_pb2.ConsumptionState.Name(reversal.consumption.state).removeprefix("CONSUMPTION_STATE_")
        print(f"   gateway: OK, consumption {state} ({yuan(reversal.consumption.reversed_fen)} of "
              f"{yuan(reversal.consumption.drawn_fen)} reversed); {figures_line(reversal.quota)}")
        self.told(binding_id, {"Xinjiang 650000": 1, "Gansu 620000": 1})

        clear_month(ops, bill.clearing_window_id, today, (self.xinjiang, self.gansu))

        print("11. The binding is dissolved: the unused quota goes back to her son:")
        dissolved = self.xinjiang.control.DissolveBinding(control_pb2.StubDissolveRequest(
            binding_id=binding_id, reason="DEMO_FINISHED"), timeout=10)
        print(f"   binding {binding_id}: {dissolved.code} {dissolved.state}")
        self.told(binding_id, {"Xinjiang 650000": 1, "Gansu 620000": 1})
        self.compare(binding_id)
        return self.ok

    def compare(self, binding_id: str) -> None:
        """The gateway's figures beside the giver's province's freeze and debit for this binding."""
        quota = self.xinjiang.control.QueryQuota(control_pb2.QueryQuotaRequest(binding_id=binding_id),
                                                 timeout=5).answer.quota
        given = next((g for g in self.xinjiang.ledger().given if g.binding_id == binding_id), None)
        print(f"   gateway's quota now: {figures_line(quota)}")
        same = given is not None and (given.frozen_fen, given.debited_fen, given.released_fen) == (
            quota.available_fen, quota.consumed_fen, quota.released_fen)
        print(f"   Xinjiang's freeze {yuan(given.frozen_fen if given else 0)}, debit "
              f"{yuan(given.debited_fen if given else 0)}, released {yuan(given.released_fen if given else 0)}: "
              f"{'the same as the gateway' if same else 'NOT the same as the gateway'}")
        if not same:
            self.ok = False


def clear_month(ops: operations_pb2_grpc.OperationsStub, month: str, today: str,
                provinces: tuple[Province, ...]) -> None:
    """Step 10: the operator closes the clearing month; both provinces acknowledge; the payment is recorded.

    Said plainly and passed over when the gateway cannot (yet): the quota story goes on.
    """
    if month[1:] > today[:7]:
        print(f"10. The draw went into clearing month {month} (this month's was closed by an earlier run): it is "
              "closed after it ends, not now.")
        return
    print(f"10. The operator closes clearing month {month}:")
    try:
        window = ops.CloseSettlementWindow(operations_pb2.CloseSettlementWindowRequest(window_id=month),
                                           timeout=10).window
    except grpc.RpcError as error:
        print(f"   the gateway answered {error.code().name}: {error.details()}; clearing skipped")
        return
    for line in window.lines:
        print(f"   owed {line.from_province} -> {line.to_province}: {yuan(line.net_fen)} yuan "
              f"({line.consumption_count} consumption(s) {yuan(line.consumed_fen)}, "
              f"{line.reversal_count} reversal(s) {yuan(line.reversed_fen)})")
    deadline = time.monotonic() + TIMEOUT_S
    while window.state == settlements_pb2.SETTLEMENT_WINDOW_STATE_CLOSED and time.monotonic() < deadline:
        time.sleep(0.1)
        window = ops.GetSettlementWindow(operations_pb2.GetSettlementWindowRequest(window_id=month), timeout=5).window
    for province in provinces:
        for r in province.control.Snapshot(control_pb2.SnapshotRequest(), timeout=5).settlements:
            if r.window_id == month:
                print(f"   {province.name} acknowledged figures sha256 {r.figures_sha256.hex()[:16]}...")
    state = settlements_pb2.SettlementWindowState.Name(window.state).removeprefix("SETTLEMENT_WINDOW_STATE_")
    print(f"   month {state}; acknowledged by {', '.join(window.acknowledged_by) or 'nobody yet'}")
    if window.state == settlements_pb2.SETTLEMENT_WINDOW_STATE_SETTLED:
        print("   its payment was recorded before (an earlier run)")
        return
    if window.state != settlements_pb2.SETTLEMENT_WINDOW_STATE_ACKNOWLEDGED:
        print("   not acknowledged in time: no payment recorded")
        return
    payments = [operations_pb2.PaymentRecord(
        from_province=line.from_province if line.net_fen > 0 else line.to_province,
        to_province=line.to_province if line.net_fen > 0 else line.from_province,
        bank="PBOC", serial_number=f"DEMO-{month}-{i + 1}", date=today)
        for i, line in enumerate(window.lines) if line.net_fen]
    try:
        window = ops.RecordSettlementPayment(operations_pb2.RecordSettlementPaymentRequest(
            window_id=month, payments=payments), timeout=10).window
    except grpc.RpcError as error:
        print(f"   recording the payment: the gateway answered {error.code().name}: {error.details()}")
        return
    state = settlements_pb2.SettlementWindowState.Name(window.state).removeprefix("SETTLEMENT_WINDOW_STATE_")
    print(f"   payment references recorded: month {state}")
