"""What generic clients see: health, reflection, UNIMPLEMENTED for later issues, operator RPC checks."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.config import Settings
from gateway.manifest import load_manifest
from protos.gongji.v1 import keys_pb2, operations_pb2, quotas_pb2, relations_pb2, settlements_pb2, transfers_pb2
from tests.support import GANSU, XINJIANG, LoopThread, Stack, error_of, start_stack


def test_health_is_served_on_both_ports(stack: Stack) -> None:
    for channel in (stack.channel, stack.ops_channel):
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", ):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    answer = health_pb2_grpc.HealthStub(stack.channel).Check(
        health_pb2.HealthCheckRequest(service="gongji.v1.Transfers"), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def _listed_services(channel: grpc.Channel) -> set[str]:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=5)
    return {s.name for answer in answers for s in answer.list_services_response.service}


def test_reflection_lets_generic_clients_discover_the_services(stack: Stack) -> None:
    assert {"gongji.v1.Transfers", "gongji.v1.Relations", "gongji.v1.Settlements", "gongji.v1.Quotas",
            "grpc.health.v1.Health"} <= _listed_services(stack.channel)
    assert "gongji.v1.Operations" in _listed_services(stack.ops_channel)
    assert "gongji.v1.Operations" not in _listed_services(stack.channel)


def test_every_declared_rpc_is_served(stack: Stack) -> None:
    """The whole contract is implemented: no RPC of any service answers UNIMPLEMENTED any more. Nor INTERNAL:
    a method a servicer does not override raises NotImplementedError, which the error table would turn into
    INTERNAL, and an empty request deserves a clear refusal anyway."""
    services = [(stack.channel, transfers_pb2, "Transfers"), (stack.channel, relations_pb2, "Relations"),
                (stack.channel, settlements_pb2, "Settlements"), (stack.channel, keys_pb2, "GatewayKeys"),
                (stack.channel, quotas_pb2, "Quotas"), (stack.ops_channel, operations_pb2, "Operations")]
    served = 0
    for channel, module, name in services:
        service = module.DESCRIPTOR.services_by_name[name]
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            if method.server_streaming:
                call = channel.unary_stream(path, request_serializer=bytes, response_deserializer=bytes)
                try:
                    next(iter(call(b"", timeout=0.5)))
                    code = grpc.StatusCode.OK
                except grpc.RpcError as error:
                    code = error.code()  # a watch with nothing to say runs into its deadline
            else:
                unary = channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)
                try:
                    unary(b"", timeout=5)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as error:
                    code = error.code()
            assert code not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL), (path, code)
            served += 1
    assert served >= 25


def test_register_province_validates_and_refuses_duplicates(stack: Stack) -> None:
    def register(**fields: object) -> object:
        base: dict[str, object] = {"code": "110000", "name": "北京", "endpoint": "127.0.0.1:50070", "keys": [
            operations_pb2.ProvinceKey(key_id="110000-k1", alg="ed25519", public_key=b"\x01" * 32)]}
        base.update(fields)
        return stack.operations.RegisterProvince(
            operations_pb2.RegisterProvinceRequest(province=operations_pb2.Province(**base)), timeout=5)

    cases = [
        ({"code": "110100"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PROVINCE_CODE"),
        ({"endpoint": "nowhere"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ENDPOINT"),
        ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME"),
        ({"keys": []}, grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD"),
        ({"keys": [operations_pb2.ProvinceKey(key_id="110000-k1", alg="ed25519", public_key=b"\x01" * 31)]},
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PUBLIC_KEY"),
        ({"keys": [operations_pb2.ProvinceKey(key_id="110000-k1", alg="rsa", public_key=b"\x01" * 32)]},
         grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_KEY_ALGORITHM"),
        ({"keys": [operations_pb2.ProvinceKey(key_id="650000-k1", alg="ed25519", public_key=b"\x01" * 32)]},
         grpc.StatusCode.ALREADY_EXISTS, "KEY_ID_TAKEN"),
        ({"code": XINJIANG}, grpc.StatusCode.ALREADY_EXISTS, "PROVINCE_EXISTS"),
        ({"policy": operations_pb2.ProvincePolicy(return_hour=25)}, grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_POLICY"),
    ]
    for fields, code, reason in cases:
        seen = error_of(lambda f=fields: register(**f))
        assert (seen.code, seen.reason) == (code, reason), fields
    register(policy=operations_pb2.ProvincePolicy(single_relation_only=True, max_transfer_fen=100_000))
    listed = {p.code: p for p in stack.operations.ListProvinces(operations_pb2.ListProvincesRequest(),
                                                                timeout=5).provinces}
    assert set(listed) == {"110000", GANSU, XINJIANG}
    beijing = listed["110000"]
    assert beijing.policy.single_relation_only and beijing.policy.max_transfer_fen == 100_000
    assert not beijing.policy.HasField("daily_transfer_limit")  # unset: the national default applies
    seen = error_of(lambda: stack.operations.UpdateProvince(
        operations_pb2.UpdateProvinceRequest(code="130000", endpoint="127.0.0.1:1"), timeout=5))
    assert (seen.code, seen.reason) == (grpc.StatusCode.NOT_FOUND, "PROVINCE_NOT_FOUND")


def test_a_province_name_or_endpoint_that_is_not_plain_text_is_refused_and_nothing_changes(stack: Stack) -> None:
    """Names reach operators' terminals and the dashboard: printable text only, no control characters,
    terminal escapes or bidi overrides; endpoints are ASCII host:port."""
    def provinces() -> list[operations_pb2.Province]:
        return list(stack.operations.ListProvinces(operations_pb2.ListProvincesRequest(), timeout=5).provinces)

    before, counts = provinces(), stack.counts()
    key = operations_pb2.ProvinceKey(key_id="110000-k1", alg="ed25519", public_key=b"\x01" * 32)
    for field, value, reason in [
        ("name", "北\x1b[31m京", "INVALID_NAME"), ("name", "\u202e京北", "INVALID_NAME"),
        ("name", "北京\n", "INVALID_NAME"), ("name", "北\x00京", "INVALID_NAME"), ("name", "北\x9b京", "INVALID_NAME"),
        ("name", "北\u200b京", "INVALID_NAME"), ("name", " ", "INVALID_NAME"), ("name", "京" * 65, "INVALID_NAME"),
        ("endpoint", "北京.example.cn:443", "INVALID_ENDPOINT"), ("endpoint", "bad host:443", "INVALID_ENDPOINT"),
    ]:
        fields = {"name": "北京", "endpoint": "127.0.0.1:50070", field: value}
        seen = error_of(lambda f=fields: stack.operations.RegisterProvince(  # type: ignore[misc]
            operations_pb2.RegisterProvinceRequest(province=operations_pb2.Province(code="110000", keys=[key], **f)),
            timeout=5))
        assert (seen.code, seen.reason, seen.metadata.get("field")) == (
            grpc.StatusCode.INVALID_ARGUMENT, reason, f"province.{field}"), value
        seen = error_of(lambda f=field, v=value: stack.operations.UpdateProvince(  # type: ignore[misc]
            operations_pb2.UpdateProvinceRequest(code=XINJIANG, **{f: v}), timeout=5))
        assert (seen.code, seen.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), value
    assert provinces() == before and stack.counts() == counts


def test_manifest_is_applied_at_start_and_keeps_operator_status(loop_thread: LoopThread, tmp_path: Path,
                                                                db_url: str) -> None:
    manifest = tmp_path / "manifest.toml"
    manifest.write_text("""
[[provinces]]
code = "110000"
name = "北京"
endpoint = "127.0.0.1:50070"
[provinces.policy]
single_relation_only = true
[[provinces.keys]]
key_id = "110000-k1"
public_key_hex = "0101010101010101010101010101010101010101010101010101010101010101"
""", encoding="utf-8")
    assert [p.code for p in load_manifest(manifest)] == ["110000"]
    stack = start_stack(loop_thread, tmp_path, db_url, manifest=manifest)
    try:
        listed = stack.operations.ListProvinces(operations_pb2.ListProvincesRequest(), timeout=5).provinces
        assert {p.code for p in listed} == {"110000", XINJIANG, GANSU}
        stack.operations.UpdateProvince(operations_pb2.UpdateProvinceRequest(
            code="110000", status=operations_pb2.PROVINCE_STATUS_SUSPENDED), timeout=5)
    finally:
        stack.close()
    # The same gateway (same key files) restarted on the same database.
    restarted = start_stack(loop_thread, tmp_path, db_url, with_stubs=False, manifest=manifest)
    try:
        beijing = next(p for p in restarted.operations.ListProvinces(operations_pb2.ListProvincesRequest(),
                                                                     timeout=5).provinces if p.code == "110000")
        assert beijing.status == operations_pb2.PROVINCE_STATUS_SUSPENDED
    finally:
        restarted.close()


def test_bad_settings_are_refused_at_start(tmp_path: Path) -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError):
        Settings.from_env({"GONGJI_LISTEN": "nowhere"})
    with pytest.raises(ConfigError):
        Settings.from_env({"GONGJI_DATABASE_URL": "mysql://x"})
    with pytest.raises(ConfigError):
        Settings.from_env({"GONGJI_MANIFEST": str(tmp_path / "missing.toml")})
    plaintext = {"GONGJI_INSECURE_DEV_PLAINTEXT": "true"}
    # An outbox lease shorter than two province calls could let another gateway resend a message in flight.
    with pytest.raises(ConfigError, match="lease"):
        Settings.from_env({**plaintext, "GONGJI_OUTBOX_LEASE_SECONDS": "9"})
    assert Settings.from_env({**plaintext, "GONGJI_OUTBOX_LEASE_SECONDS": "10"}).outbox.lease_seconds == 10
    assert Settings.from_env(plaintext).outbox.lease_seconds == 30
    # SQLite syncs every commit unless the operator trades that for speed (docs/operations.md, "Configuration").
    assert Settings.from_env(plaintext).sqlite_synchronous == "FULL"
    assert Settings.from_env({**plaintext, "GONGJI_SQLITE_SYNCHRONOUS": "normal"}).sqlite_synchronous == "NORMAL"
    with pytest.raises(ConfigError, match="GONGJI_SQLITE_SYNCHRONOUS"):
        Settings.from_env({**plaintext, "GONGJI_SQLITE_SYNCHRONOUS": "OFF"})
    # The ports' limits (docs/security.md, "Hostile input and limits").
    limits = Settings.from_env({**plaintext, "GONGJI_HTTP_WORKERS": "2", "GONGJI_HTTP_MAX_CONNECTIONS": "16",
                                "GONGJI_HTTP_TIMEOUT_SECONDS": "2.5", "GONGJI_GRPC_MAX_CONNECTIONS": "32"})
    assert (limits.http_workers, limits.http_max_connections, limits.http_timeout_seconds,
            limits.grpc_max_connections) == (2, 16, 2.5, 32)
    for name, value in (("HTTP_WORKERS", "0"), ("HTTP_MAX_CONNECTIONS", "0"), ("HTTP_TIMEOUT_SECONDS", "0"),
                        ("GRPC_MAX_CONNECTIONS", "0")):
        with pytest.raises(ConfigError, match=name.lower()):
            Settings.from_env({**plaintext, f"GONGJI_{name}": value})


def test_graceful_stop_reports_not_serving_first(loop_thread: LoopThread, tmp_path: Path, sqlite_url: str) -> None:
    stack = start_stack(loop_thread, tmp_path, sqlite_url)
    with grpc.insecure_channel(f"127.0.0.1:{stack.gateway.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopping = threading.Thread(target=stack.close)
        stopping.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stopping.join(15)
    with grpc.insecure_channel(f"127.0.0.1:{stack.gateway.port}") as channel:
        seen = error_of(lambda: health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2))
    assert seen.code == grpc.StatusCode.UNAVAILABLE  # stopped: new calls are refused
