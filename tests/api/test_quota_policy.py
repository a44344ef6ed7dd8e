"""Q1: which regimes a province takes part in (its policy's mutual_aid_mode), set through the CLI, and Q11's
per-consumption maximum; a transfer needs both provinces to allow transfers."""

from __future__ import annotations

import grpc

from protos.gongji.v1 import operations_pb2
from tests.api.cli_support import gongji, gongji_json
from tests.support import GANSU, XINJIANG, Stack, error_of


def test_the_mode_and_maximum_are_policy_set_by_the_cli_and_quota_only_refuses_transfers(stack: Stack) -> None:
    code, out = gongji(stack, "provinces", "update", GANSU, "--policy-mutual-aid-mode", "quota",
                       "--policy-max-consumption-fen", "50000")
    assert code == 0, out
    shown = gongji_json(stack, "provinces", "show", GANSU)
    assert shown["policy"]["mutual_aid_mode"] == "MUTUAL_AID_MODE_QUOTA"
    assert shown["policy"]["max_consumption_fen"] == "50000"
    code, out = gongji(stack, "provinces", "show", GANSU)
    assert "quota" in out and "500.00" in out

    before = stack.counts()
    seen = error_of(lambda: stack.submit(stack.instruction()))
    assert (seen.code, seen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TRANSFERS_NOT_ALLOWED")
    assert seen.metadata["field"] == "header.receiver"
    assert stack.counts()["transfers"] == before["transfers"]  # a stored refusal, nothing counted

    # Back to the default (both): transfers pass again.
    code, out = gongji(stack, "provinces", "update", GANSU, "--policy-default", "mutual_aid_mode")
    assert code == 0, out
    assert stack.submit(stack.instruction()).transfer_id


def test_a_giver_province_on_quotas_only_cannot_submit_and_bad_values_are_refused(stack: Stack) -> None:
    stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
        code=XINJIANG, policy=operations_pb2.ProvincePolicy(mutual_aid_mode=operations_pb2.MUTUAL_AID_MODE_QUOTA,
                                                            blackout_start_minute=0, blackout_end_minute=0)),
        timeout=5)
    seen = error_of(lambda: stack.submit(stack.instruction()))
    assert (seen.code, seen.reason, seen.metadata["field"]) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                                "TRANSFERS_NOT_ALLOWED", "header.sender")
    for policy, field in ((operations_pb2.ProvincePolicy(mutual_aid_mode=9), "policy.mutual_aid_mode"),  # type: ignore[arg-type]
                          (operations_pb2.ProvincePolicy(max_consumption_fen=0), "policy.max_consumption_fen")):
        seen = error_of(lambda p=policy: stack.operations.UpdateProvince(  # type: ignore[misc]
            operations_pb2.UpdateProvinceRequest(code=XINJIANG, policy=p), timeout=5))
        assert (seen.code, seen.reason, seen.metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                    "INVALID_POLICY", field)
