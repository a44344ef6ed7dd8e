"""`gongji provinces ...`: the routing table: list, show, register, update, suspend, resume."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.message import Message
from rich.panel import Panel
from rich.table import Column, Table

from gateway.addresses import DEFAULT_OPS_LISTEN
from gateway.cli.connection import TIMEOUT_S, AsJson, OpsAddress, operations
from gateway.cli.output import add_row, beijing_time, console, fail, field_grid, print_json, shown, yuan
from gateway.cli.times import TIME_HELP, parse_time, timestamp_of
from protos.gongji.v1 import operations_pb2, operations_pb2_grpc

provinces_app = typer.Typer(help="The routing table.", no_args_is_help=True)


def _status(value: operations_pb2.ProvinceStatus.ValueType) -> str:
    return operations_pb2.ProvinceStatus.Name(value).removeprefix("PROVINCE_STATUS_")


@provinces_app.command("list")
def provinces_list(ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False) -> None:
    """Every province in the routing table."""
    with operations(ops) as stub:
        answer = stub.ListProvinces(operations_pb2.ListProvincesRequest(), timeout=TIMEOUT_S)
    if as_json:
        print_json(answer)
        return
    table = Table("code", "name", "endpoint", "status", "keys")
    for p in answer.provinces:
        add_row(table, p.code, p.name, p.endpoint, _status(p.status), ", ".join(k.key_id for k in p.keys))
    console.print(table)


POLICY_FIELDS = (  # (field of ProvincePolicy, what it means)
    ("single_relation_only", "D8: one relation at a time"),
    ("daily_transfer_limit", "D12: transfers per giver per Beijing day"),
    ("max_transfer_fen", "D12: largest single transfer"),
    ("blackout_start_minute", "D12: no submissions from (Beijing)"),
    ("blackout_end_minute", "D12: ... until (Beijing)"),
    ("return_hour", "D13: unconfirmed transfers return at (Beijing, next day)"),
    ("delivery_deadline_seconds", "delivery attempts stop after (seconds)"),
    ("mutual_aid_mode", "Q1: transfer (pilot), quota (2026) or both"),
    ("max_consumption_fen", "Q11: largest single consumption"),
)


def _policy_value(policy: Message, field: str) -> str:
    if not policy.HasField(field):
        return "national default"
    value = getattr(policy, field)
    if field == "mutual_aid_mode":
        return operations_pb2.MutualAidMode.Name(value).removeprefix("MUTUAL_AID_MODE_").lower()
    if field in ("max_transfer_fen", "max_consumption_fen"):
        return f"{yuan(value)} ({value} fen)"
    if field.endswith("_minute"):
        return f"{value // 60:02d}:{value % 60:02d} ({value})"
    if field == "return_hour":
        return f"{value:02d}:00"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _key_validity(key: operations_pb2.ProvinceKey, now: datetime) -> str:
    if key.HasField("valid_until") and key.valid_until.ToDatetime(tzinfo=UTC) <= now:
        return "retired"
    if key.HasField("valid_from") and key.valid_from.ToDatetime(tzinfo=UTC) > now:
        return "not yet valid"
    return "valid"


def _print_province(p: operations_pb2.Province) -> None:
    console.print(Panel(field_grid([("code", p.code), ("name", p.name), ("endpoint", p.endpoint),
                                    ("status", _status(p.status)),
                                    ("updated (Beijing)", beijing_time(p, "updated_at"))]),
                        title=f"province {shown(p.code)}", expand=False))
    policy = Table("policy", "value", "meaning", title="policy")
    for field, meaning in POLICY_FIELDS:
        add_row(policy, field, _policy_value(p.policy, field), meaning)
    console.print(policy)
    now = datetime.now(UTC)
    keys = Table("key id", "alg", Column("public key (hex)", overflow="fold"), "valid from (Beijing)",
                 "valid until (Beijing)", "now", title="signing keys")
    for k in p.keys:
        add_row(keys, k.key_id, k.alg, k.public_key.hex(), beijing_time(k, "valid_from"),
                beijing_time(k, "valid_until"), _key_validity(k, now))
    console.print(keys)


@provinces_app.command("show")
def provinces_show(code: str, ops: OpsAddress = DEFAULT_OPS_LISTEN, as_json: AsJson = False) -> None:
    """One province: its endpoint, status, policy and signing keys with their validity."""
    with operations(ops) as stub:
        answer = stub.ListProvinces(operations_pb2.ListProvincesRequest(), timeout=TIMEOUT_S)
    province = next((p for p in answer.provinces if p.code == code), None)
    if province is None:
        fail(f"NOT_FOUND PROVINCE_NOT_FOUND: no province {code} in the routing table")
    if as_json:
        print_json(province)
        return
    _print_province(province)


def load_public_key(path: Path) -> bytes:
    """The raw 32-byte Ed25519 public key of a file, in any format the manifest accepts too (security/keys.py)."""
    # Here, not at the top: `cryptography` is only for the commands that read a key file, and every command
    # (`gongji stats` every few seconds, say) would pay for loading it.
    from gateway.security.keys import load_public_key as read_public_key

    try:
        return read_public_key(path)
    except ValueError as error:
        fail(str(error), 2)


PolicyInt = Annotated[int | None, typer.Option(min=0, help="Unset: the national default.")]
PolicySingle = Annotated[bool | None, typer.Option(
    "--policy-single-relation-only/--policy-multiple-relations", help="D8. Unset: the national default.")]

class Mode(enum.StrEnum):
    transfer = "transfer"
    quota = "quota"
    both = "both"


PolicyMode = Annotated[Mode | None, typer.Option(
    help="Q1: the regimes it takes part in. Unset: the national default (both).", show_default=False)]
PublicKeyFile = Annotated[Path, typer.Option(
    exists=True, dir_okay=False, readable=True,
    help="Ed25519 public key file: raw 32 bytes, hex text (like var/keys/*.pub), or PEM/DER.")]


def _policy_given(single_relation_only: bool | None, mode: Mode | None = None,
                  **numbers: int | None) -> dict[str, int | bool]:
    """The policy options given on the command line, by ProvincePolicy field."""
    given: dict[str, int | bool | None] = {
        "single_relation_only": single_relation_only, **numbers,
        "mutual_aid_mode": None if mode is None else operations_pb2.MutualAidMode.Value(
            f"MUTUAL_AID_MODE_{mode.value.upper()}")}
    return {field: value for field, value in given.items() if value is not None}


@provinces_app.command("register")
def provinces_register(
    code: Annotated[str, typer.Option(help="Six-digit province code, e.g. 610000.")],
    name: Annotated[str, typer.Option(help="Display name, e.g. 陕西.")],
    endpoint: Annotated[str, typer.Option(help="host:port of the province's ProvinceInbox.")],
    key_id: Annotated[str, typer.Option(help="Its signing key's id, e.g. 610000-k1.")],
    public_key: PublicKeyFile,
    policy_single_relation_only: PolicySingle = None,
    policy_daily_transfer_limit: PolicyInt = None,
    policy_max_transfer_fen: PolicyInt = None,
    policy_blackout_start_minute: PolicyInt = None,
    policy_blackout_end_minute: PolicyInt = None,
    policy_return_hour: PolicyInt = None,
    policy_delivery_deadline_seconds: PolicyInt = None,
    policy_mutual_aid_mode: PolicyMode = None,
    policy_max_consumption_fen: PolicyInt = None,
    ops: OpsAddress = DEFAULT_OPS_LISTEN,
    as_json: AsJson = False,
) -> None:
    """Add a province to the routing table (ACTIVE, its key valid from now)."""
    policy = operations_pb2.ProvincePolicy(**_policy_given(  # type: ignore[arg-type]
        policy_single_relation_only, policy_mutual_aid_mode, max_consumption_fen=policy_max_consumption_fen,
        daily_transfer_limit=policy_daily_transfer_limit,
        max_transfer_fen=policy_max_transfer_fen, blackout_start_minute=policy_blackout_start_minute,
        blackout_end_minute=policy_blackout_end_minute, return_hour=policy_return_hour,
        delivery_deadline_seconds=policy_delivery_deadline_seconds))
    key = operations_pb2.ProvinceKey(key_id=key_id, alg="ed25519", public_key=load_public_key(public_key))
    request = operations_pb2.RegisterProvinceRequest(province=operations_pb2.Province(
        code=code, name=name, endpoint=endpoint, keys=[key], policy=policy))
    with operations(ops) as stub:
        answer = stub.RegisterProvince(request, timeout=TIMEOUT_S)
    if as_json:
        print_json(answer.province)
        return
    console.print(f"registered province {shown(answer.province.code)} ({shown(answer.province.name)}), "
                  f"{_status(answer.province.status)}")
    _print_province(answer.province)


class Status(enum.StrEnum):
    active = "active"
    suspended = "suspended"


_STATUSES = {Status.active: operations_pb2.PROVINCE_STATUS_ACTIVE,
             Status.suspended: operations_pb2.PROVINCE_STATUS_SUSPENDED}
POLICY_NAMES = tuple(field for field, _ in POLICY_FIELDS)


def _key_to_add(key_id: str | None, public_key: Path | None, valid_from: str | None,
                valid_until: str | None) -> list[operations_pb2.ProvinceKey]:
    if key_id is None:
        if public_key is not None or valid_from is not None or valid_until is not None:
            fail("--public-key, --valid-from and --valid-until describe a key added with --add-key KEY_ID", 2)
        return []
    if public_key is None:
        fail("--add-key needs the key's --public-key FILE", 2)
    key = operations_pb2.ProvinceKey(key_id=key_id, alg="ed25519", public_key=load_public_key(public_key))
    if valid_from is not None:
        key.valid_from.CopyFrom(timestamp_of(parse_time(valid_from, "--valid-from")))
    if valid_until is not None:
        key.valid_until.CopyFrom(timestamp_of(parse_time(valid_until, "--valid-until")))
    return [key]


def _merged_policy(stub: operations_pb2_grpc.OperationsStub, code: str, given: dict[str, int | bool],
                   defaults: list[str]) -> operations_pb2.ProvincePolicy:
    """The province's policy as it stands with the fields given changed and those named back to the national
    default: UpdateProvince replaces the whole policy."""
    current = stub.ListProvinces(operations_pb2.ListProvincesRequest(), timeout=TIMEOUT_S).provinces
    found = next((p for p in current if p.code == code), None)
    policy = operations_pb2.ProvincePolicy()
    if found is not None:  # an unknown province: UpdateProvince says so
        policy.CopyFrom(found.policy)
    for field in defaults:
        policy.ClearField(field)  # type: ignore[arg-type]
    for field, value in given.items():
        setattr(policy, field, value)
    return policy


@provinces_app.command("update")
def provinces_update(
    code: str,
    name: Annotated[str | None, typer.Option(help="New display name.", show_default=False)] = None,
    endpoint: Annotated[str | None, typer.Option(help="New host:port of its ProvinceInbox.", show_default=False)]
    = None,
    status: Annotated[Status | None, typer.Option(help="active or suspended (as resume / suspend).",
                                                  show_default=False)] = None,
    policy_single_relation_only: PolicySingle = None,
    policy_daily_transfer_limit: PolicyInt = None,
    policy_max_transfer_fen: PolicyInt = None,
    policy_blackout_start_minute: PolicyInt = None,
    policy_blackout_end_minute: PolicyInt = None,
    policy_return_hour: PolicyInt = None,
    policy_delivery_deadline_seconds: PolicyInt = None,
    policy_mutual_aid_mode: PolicyMode = None,
    policy_max_consumption_fen: PolicyInt = None,
    policy_default: Annotated[list[str] | None, typer.Option(
        "--policy-default", metavar="FIELD", show_default=False,
        help=f"Set this policy field back to the national default (repeatable): one of {', '.join(POLICY_NAMES)}.")]
    = None,
    add_key: Annotated[str | None, typer.Option("--add-key", metavar="KEY_ID", show_default=False,
                                                help="Add a signing key with this id (with --public-key).")] = None,
    public_key: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, readable=True, show_default=False,
        help="The added key's Ed25519 public key file: raw 32 bytes, hex text, or PEM/DER.")] = None,
    valid_from: Annotated[str | None, typer.Option(help=f"The added key is valid from: {TIME_HELP} (default: now).",
                                                   show_default=False)] = None,
    valid_until: Annotated[str | None, typer.Option(help="... until (default: no end).", show_default=False)] = None,
    retire_key: Annotated[list[str] | None, typer.Option(
        "--retire-key", metavar="KEY_ID", show_default=False,
        help="Retire this key of the province at once (repeatable); calls signed with it are refused.")] = None,
    ops: OpsAddress = DEFAULT_OPS_LISTEN,
    as_json: AsJson = False,
) -> None:
    """Change a province's name, endpoint, status, policy or keys; effective on the next call.

    Policy options change only the fields given (the rest stay as they are); --policy-default FIELD sets one
    back to the national default.
    """
    given = _policy_given(
        policy_single_relation_only, policy_mutual_aid_mode, max_consumption_fen=policy_max_consumption_fen,
        daily_transfer_limit=policy_daily_transfer_limit,
        max_transfer_fen=policy_max_transfer_fen, blackout_start_minute=policy_blackout_start_minute,
        blackout_end_minute=policy_blackout_end_minute, return_hour=policy_return_hour,
        delivery_deadline_seconds=policy_delivery_deadline_seconds)
    defaults = [field.replace("-", "_") for field in policy_default or []]
    unknown = [field for field in defaults if field not in POLICY_NAMES]
    if unknown:
        fail(f"--policy-default: no policy field {unknown[0]!r}; one of {', '.join(POLICY_NAMES)}", 2)
    if set(defaults) & given.keys():
        fail("a policy field is both given and set back to the national default", 2)
    request = operations_pb2.UpdateProvinceRequest(
        code=code, status=_STATUSES[status] if status else operations_pb2.PROVINCE_STATUS_UNSPECIFIED,
        add_keys=_key_to_add(add_key, public_key, valid_from, valid_until), retire_key_ids=retire_key or [])
    if name is not None:
        request.name = name
    if endpoint is not None:
        request.endpoint = endpoint
    changes = [what for what, changed in (("name", name is not None), ("endpoint", endpoint is not None),
                                          ("status", status is not None), ("policy", bool(given or defaults)),
                                          ("keys", bool(request.add_keys or request.retire_key_ids))) if changed]
    if not changes:
        fail("nothing to change: give --name, --endpoint, --status, a --policy-... option, --add-key or "
             "--retire-key", 2)
    with operations(ops) as stub:
        if given or defaults:
            request.policy.CopyFrom(_merged_policy(stub, code, given, defaults))
        answer = stub.UpdateProvince(request, timeout=TIMEOUT_S)
    if as_json:
        print_json(answer.province)
        return
    console.print(f"updated province {shown(answer.province.code)}: {', '.join(changes)}")
    _print_province(answer.province)


def _set_status(ops: str, code: str, status: operations_pb2.ProvinceStatus.ValueType) -> None:
    with operations(ops) as stub:
        answer = stub.UpdateProvince(operations_pb2.UpdateProvinceRequest(code=code, status=status),
                                     timeout=TIMEOUT_S)
    console.print(f"province {shown(answer.province.code)} is now {_status(answer.province.status)}")


@provinces_app.command("suspend")
def provinces_suspend(code: str, ops: OpsAddress = DEFAULT_OPS_LISTEN) -> None:
    """Suspend a province: it can neither submit nor receive until resumed."""
    _set_status(ops, code, operations_pb2.PROVINCE_STATUS_SUSPENDED)


@provinces_app.command("resume")
def provinces_resume(code: str, ops: OpsAddress = DEFAULT_OPS_LISTEN) -> None:
    """Make a suspended province active again."""
    _set_status(ops, code, operations_pb2.PROVINCE_STATUS_ACTIVE)
