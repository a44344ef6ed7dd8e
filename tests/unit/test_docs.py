"""The documents (README.md and docs/) checked against the code and the protos they describe."""

from __future__ import annotations

import ast
import importlib.resources
import re
import unicodedata
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FileDescriptor
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection
from grpc_tools import protoc  # type: ignore[import-untyped]  # grpcio-tools ships no type information

from gateway.app import MAX_STREAMS_PER_CONNECTION, OPERATOR_SERVICES, PROVINCE_SERVICES
from gateway.config import Settings
from gateway.domain.bindings import MAX_CONSENT_WINDOW
from gateway.domain.eligibility import (
    ELIGIBLE_RELATIONS,
    FACE_REQUIRED_FROM_AGE,
    INELIGIBLE_RELATIONS,
    RELATION_SEX,
    RelationKind,
)
from gateway.domain.provinces import NATIONAL_DEFAULTS
from gateway.store.engine import CONNECT_TIMEOUT_SECONDS
from protos.gongji.v1 import (
    common_pb2,
    keys_pb2,
    operations_pb2,
    province_pb2,
    quotas_pb2,
    relations_pb2,
    settlements_pb2,
    transfers_pb2,
)

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
CONTRACT = DOCS / "contract.md"
RULES = DOCS / "rules.md"
OPERATIONS = DOCS / "operations.md"
PUBLISHED = (CONTRACT, RULES)
EVERY_DOCUMENT = (README, *sorted(DOCS.glob("*.md")))
README_MAX_LINES = 200
CONTRACT_FILES: tuple[FileDescriptor, ...] = tuple(
    module.DESCRIPTOR for module in (common_pb2, keys_pb2, operations_pb2, province_pb2, quotas_pb2, relations_pb2,
                                     settlements_pb2, transfers_pb2))
# The services a province meets; Operations is only pointed to (its protos carry its semantics).
PROVINCE_FACING = ("Transfers", "Relations", "Settlements", "Quotas", "GatewayKeys", "ProvinceInbox")

BACKTICKED = re.compile(r"`([^`\n]+)`")
UPPER_SNAKE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
CITATION = re.compile(r"((?:gateway|province_stub|scripts|tests|protos|bench)/[\w/]+\.(?:py|proto|sh))(?:(::?)(\w+))?")
RANGE = re.compile(r"(\d{2})(?:–(\d{2}))?")
# rules.md's "- Where: `module:name`, `other_name`; `module2:name`" items, continued on indented lines.
WHERE = re.compile(r"^- Where: .*(?:\n  .*)*", re.MULTILINE)
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
VARIABLE = re.compile(r"\bGONGJI_[A-Z0-9]+(?:_[A-Z0-9]+)*")


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def backticked(path: Path) -> list[str]:
    return BACKTICKED.findall(text(path))


def table_rows(path: Path, header_start: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header row starts with `header_start`, cells stripped."""
    lines = text(path).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def codes(cell: str) -> set[str]:
    """"10, 20–27" -> {"10", "20", ..., "27"}."""
    found: set[str] = set()
    for first, last in RANGE.findall(cell):
        found |= {f"{n:02d}" for n in range(int(first), int(last or first) + 1)}
    return found


def source_files() -> list[Path]:
    return [path for folder in ("gateway", "province_stub") for path in (ROOT / folder).rglob("*.py")
            if "_pb2" not in path.name]


def string_literals(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(text(path)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def all_messages(descriptors: tuple[Descriptor, ...]) -> list[Descriptor]:
    return [*descriptors, *(nested for d in descriptors for nested in all_messages(tuple(d.nested_types)))]


# -- the messages and RPCs ---------------------------------------------------------------------------------


def payload_types_in_the_table() -> set[str]:
    return {row[0].strip("`") for row in table_rows(CONTRACT, "| `payload_type` |")}


def test_the_table_lists_exactly_the_signed_business_messages_of_the_protos() -> None:
    """A signed business message is one that opens with a Header: each is a row, and each row is one."""
    header = common_pb2.Header.DESCRIPTOR
    signed = {message.full_name for file in CONTRACT_FILES
              for message in all_messages(tuple(file.message_types_by_name.values()))
              if message.fields and message.fields[0].message_type is header}
    assert len(signed) > 10
    assert payload_types_in_the_table() == signed


def test_every_payload_type_the_code_names_is_in_the_table() -> None:
    """The one table of payload types the gateway and the stub sign and verify with is documented, row for row."""
    from protos.gongji.v1 import payload_types

    named = payload_types.FROM_PROVINCES | payload_types.FROM_GATEWAY
    assert len(named) > 10, "the table should hold the contract's payload types"
    assert named - payload_types_in_the_table() == set()


@pytest.mark.parametrize("service", PROVINCE_FACING)
def test_every_rpc_a_province_meets_is_described(service: str) -> None:
    descriptor = next(file.services_by_name[service] for file in CONTRACT_FILES if service in file.services_by_name)
    named = set(backticked(CONTRACT))
    assert descriptor.full_name in text(CONTRACT)
    missing = [m.name for m in descriptor.methods if m.name not in named and f"{service}.{m.name}" not in named]
    assert missing == []


def test_the_health_names_each_port_serves_are_documented() -> None:
    named = set(backticked(CONTRACT))
    served = {*PROVINCE_SERVICES, *OPERATOR_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME}
    assert served - named == set()
    assert '`""`' in text(CONTRACT)  # the server as a whole


# -- the reasons and the rules ----------------------------------------------------------------------------


def known_words() -> set[str]:
    """Every word a document may spell in capitals: status codes, enum values (whole and short), string
    literals of the gateway and the stub (reasons, states, rules), and the variables the gateway reads."""
    words = {code.name for code in grpc.StatusCode}
    enums = [e for file in (*CONTRACT_FILES, health_pb2.DESCRIPTOR) for e in file.enum_types_by_name.values()]
    enums += [e for file in (*CONTRACT_FILES, health_pb2.DESCRIPTOR)
              for m in all_messages(tuple(file.message_types_by_name.values())) for e in m.enum_types]
    for enum in enums:
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
        words |= {value.name for value in enum.values} | {value.name.removeprefix(prefix) for value in enum.values}
    for path in source_files():
        words |= string_literals(path)
    words |= {f"GONGJI_{name}" for name in string_literals(ROOT / "gateway" / "config.py")}
    return words


@pytest.mark.parametrize("document", PUBLISHED, ids=lambda path: path.name)
def test_every_reason_the_document_names_exists_in_the_code(document: Path) -> None:
    words = known_words()
    prose = WHERE.sub("", text(document))  # code names there are checked as citations
    spelled = {token for token in BACKTICKED.findall(prose) if UPPER_SNAKE.fullmatch(token)}
    assert len(spelled) > 40, "the scan should see the document's reasons"
    assert sorted(spelled - words) == []


def test_the_relation_code_table_is_the_codes_the_gateway_judges() -> None:
    eligible: dict[str, set[str]] = {}
    ineligible: set[str] = set()
    for family, cell, is_eligible, _ in table_rows(RULES, "| family (D4) |"):
        if is_eligible == "yes":
            eligible[family] = codes(cell)
        else:
            ineligible |= codes(cell)
    expected = {kind.value.lower(): {code for code, k in ELIGIBLE_RELATIONS.items() if k is kind}
                for kind in RelationKind}
    assert eligible == expected
    assert ineligible == INELIGIBLE_RELATIONS


def test_the_gendered_codes_are_the_ones_the_gateway_checks() -> None:
    documented = {code: sex.upper() for sex, cell in table_rows(RULES, "| the receiver's sex") for code in codes(cell)}
    assert documented == {code: sex.value for code, sex in RELATION_SEX.items()}


DEFAULTS = Settings()
NUMBERS = [
    (CONTRACT, f"`GONGJI_MAX_CLOCK_SKEW_SECONDS` (default {DEFAULTS.max_clock_skew_seconds:g} s)"),
    (CONTRACT, f"`GONGJI_MAX_CLOCK_SKEW_SECONDS` ({DEFAULTS.max_clock_skew_seconds:g} s)"),
    (CONTRACT, f"`GONGJI_MAX_MESSAGE_BYTES` ({DEFAULTS.max_message_bytes}, {DEFAULTS.max_message_bytes // 1024} KiB)"),
    (CONTRACT, f"`GONGJI_GRPC_MAX_CONNECTIONS` ({DEFAULTS.grpc_max_connections})"),
    (CONTRACT, f"`GONGJI_RATE_LIMIT_PER_SECOND` ({DEFAULTS.rate_limit_per_second:g})"),
    (CONTRACT, f"`GONGJI_RATE_LIMIT_BURST` ({DEFAULTS.rate_limit_burst:g})"),
    (CONTRACT, f"`GONGJI_RELATION_QUERY_RATE_PER_SECOND` ({DEFAULTS.relation_query_rate_per_second:g})"),
    (CONTRACT, f"`GONGJI_RELATION_QUERY_BURST` ({DEFAULTS.relation_query_burst:g})"),
    (CONTRACT, f"`GONGJI_PROVINCE_CALL_TIMEOUT_SECONDS` ({DEFAULTS.province_call_timeout_seconds:g} s)"),
    (CONTRACT, f"at most {MAX_STREAMS_PER_CONNECTION} calls at once"),
    (CONTRACT, f"at most {MAX_CONSENT_WINDOW.total_seconds() / 3600:g} hours ahead"),
    (RULES, f"From {FACE_REQUIRED_FROM_AGE} on"),
    (RULES, f"`daily_transfer_limit` ({NATIONAL_DEFAULTS.daily_transfer_limit})"),
    (RULES, f"`max_transfer_fen` ({NATIONAL_DEFAULTS.max_transfer_fen})"),
    (RULES, f"({NATIONAL_DEFAULTS.blackout_start_minute}–{NATIONAL_DEFAULTS.blackout_end_minute}, i.e. 22:00–06:00"),
    (RULES, f"`return_hour` ({NATIONAL_DEFAULTS.return_hour})"),
    (RULES, f"`delivery_deadline_seconds` ({NATIONAL_DEFAULTS.delivery_deadline_seconds})"),
    (OPERATIONS, f"after at most {CONNECT_TIMEOUT_SECONDS} s of trying to connect (libpq's `connect_timeout`)"),
]


@pytest.mark.parametrize(("document", "phrase"), NUMBERS, ids=[phrase[:40] for _, phrase in NUMBERS])
def test_the_numbers_are_the_codes_defaults(document: Path, phrase: str) -> None:
    assert phrase in " ".join(text(document).split())  # wherever the lines happen to break


def message_ids_the_gateway_makes() -> list[tuple[str, dict[str, str], str]]:
    """(a pattern contract.md writes, sample values for its placeholders, the id the code makes of them)."""
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.api.receipts import SignedReceiptIssuer
    from gateway.domain.bindings import BindingState
    from gateway.domain.outbox import (
        binding_outcome_message_id,
        consent_message_id,
        consumption_notice_message_id,
        delivery_message_id,
        quota_notice_message_id,
        reversal_notice_message_id,
        settlement_message_id,
        transfer_outcome_message_id,
    )
    from gateway.domain.transfers import TransferState
    from gateway.security.signing import EnvelopeSigner

    at = datetime(2026, 5, 4, 1, 2, 3, 456789, tzinfo=UTC)
    receipt = SignedReceiptIssuer(EnvelopeSigner("gateway", "k", Ed25519PrivateKey.generate())).issue(
        request_sender="650000", request_message_id="m-1", request_sha256=b"", request_payload_type="",
        subject_id="", state="", at=at)
    receipt_id = common_pb2.Receipt.FromString(common_pb2.SignedEnvelope.FromString(receipt).payload).header.message_id
    return [
        ("dlv:<transfer_id>", {"transfer_id": "t-1"}, delivery_message_id("t-1")),
        ("out:<transfer_id>:<STATE>", {"transfer_id": "t-1", "STATE": "COMMITTED"},
         transfer_outcome_message_id("t-1", TransferState.COMMITTED)),
        ("bout:<binding_id>:<STATE>:<unix time, 6 decimals>",
         {"binding_id": "b-1", "STATE": "ACTIVE", "unix time, 6 decimals": f"{at.timestamp():.6f}"},
         binding_outcome_message_id("b-1", BindingState.ACTIVE, at)),
        ("csn:<binding_id>", {"binding_id": "b-1"}, consent_message_id("b-1")),
        ("stl:<window_id>:<province>", {"window_id": "2026-05-04", "province": "620000"},
         settlement_message_id("2026-05-04", "620000")),
        ("rcpt:<sender>:<message_id>", {"sender": "650000", "message_id": "m-1"}, receipt_id),
        ("qn:<binding_id>:<version>", {"binding_id": "b-1", "version": "3"}, quota_notice_message_id("b-1", 3)),
        ("cn:<province>:<consumption_id>", {"province": "620000", "consumption_id": "c-1"},
         consumption_notice_message_id("620000", "c-1")),
        ("cr:<province>:<message_id>", {"province": "620000", "message_id": "r-1"},
         reversal_notice_message_id("620000", "r-1")),
    ]


def test_the_message_ids_the_gateway_sends_are_spelled_as_documented() -> None:
    """Provinces de-duplicate by these ids: each pattern the contract gives is the one the code makes."""
    documented = set(re.findall(r"`((?:dlv|out|bout|csn|stl|rcpt|qn|cn|cr):[^`]+)`", text(CONTRACT)))
    made = message_ids_the_gateway_makes()
    assert documented == {pattern for pattern, _, _ in made}
    for pattern, values, message_id in made:
        assert fill(pattern, values) == message_id, pattern


def fill(pattern: str, values: dict[str, str]) -> str:
    """"dlv:<transfer_id>" with {"transfer_id": "t-1"} -> "dlv:t-1"."""
    return re.sub(r"<([^>]+)>", lambda m: values[m.group(1)], pattern)


# -- citations, links and the compile recipe -------------------------------------------------------------


def defines(path: Path, name: str) -> bool:
    pattern = rf"^\s*(?:async\s+def|def|class)\s+{name}\b|^\s*{name}\s*(?::[^=\n]*)?="
    return re.search(pattern, text(path), re.MULTILINE) is not None


@pytest.mark.parametrize("document", [*PUBLISHED, DOCS / "signing.md"], ids=lambda path: path.name)
def test_every_cited_module_and_name_exists(document: Path) -> None:
    cited = [match for token in backticked(document) if (match := CITATION.fullmatch(token))]
    assert cited or document.name == "signing.md"
    for match in cited:
        path = ROOT / match.group(1)
        assert path.is_file(), match.group(0)
        if match.group(3):
            assert defines(path, match.group(3)), match.group(0)


def test_every_name_a_where_item_gives_is_defined_in_the_module_before_it() -> None:
    """In "`gateway/domain/money.py:validate_amount`, `MAX_AMOUNT_FEN`" the second name is money.py's too."""
    checked = 0
    for item in WHERE.findall(text(RULES)):
        module: Path | None = None
        for token in BACKTICKED.findall(item):
            if match := CITATION.fullmatch(token):
                module = ROOT / match.group(1)
            elif re.fullmatch(r"\w+", token):
                assert module is not None and defines(module, token), f"{token} in: {item}"
                checked += 1
    assert checked > 10


def anchor(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lowercase, punctuation dropped, spaces as hyphens."""
    kept = "".join(c for c in heading.strip().lower() if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def outside_code(path: Path) -> str:
    """A document without its fenced blocks: a `# comment` in a shell block is no heading, a `[x](y)` no link."""
    return FENCED.sub("", text(path))


@pytest.mark.parametrize("document", EVERY_DOCUMENT, ids=lambda path: path.name)
def test_every_link_reaches_a_file_and_a_heading(document: Path) -> None:
    for target in re.findall(r"\]\(([^)]+)\)", outside_code(document)):
        if target.startswith(("http://", "https://")):
            continue
        file, _, fragment = target.partition("#")
        linked = (document.parent / file).resolve() if file else document
        assert linked.is_file(), target
        if fragment:
            headings = re.findall(r"^#+ (.+)$", outside_code(linked), re.MULTILINE)
            assert fragment in {anchor(h) for h in headings}, target


def test_the_readme_links_every_document() -> None:
    linked = {target.partition("#")[0] for target in re.findall(r"\]\(([^)]+)\)", text(README))}
    assert {f"docs/{path.name}" for path in DOCS.glob("*.md")} <= linked


def test_the_readme_stays_short() -> None:
    assert len(text(README).splitlines()) <= README_MAX_LINES


def variables_the_settings_read() -> set[str]:
    """GONGJI_<NAME> for each `get("NAME", ...)`, `number("NAME", ...)`, `path("NAME")` of Settings.from_env."""
    calls = [node for node in ast.walk(ast.parse(text(ROOT / "gateway" / "config.py")))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id in ("get", "number", "path") and node.args]
    return {f"GONGJI_{call.args[0].value}" for call in calls
            if isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)}


def variables_named_in(paths: list[Path]) -> set[str]:
    return {literal for path in paths for literal in string_literals(path) if VARIABLE.fullmatch(literal)}


def test_the_operations_document_names_every_setting_the_gateway_reads() -> None:
    read = variables_the_settings_read()
    assert len(read) > 35, "the scan should see every setting"
    assert sorted(read - set(VARIABLE.findall(text(OPERATIONS)))) == []


def test_every_variable_the_operations_document_names_is_read() -> None:
    """By the gateway's settings, or by `make run` (scripts/devstack.py) and the CLI for their own."""
    readers = [ROOT / "scripts" / "devstack.py", *(ROOT / "gateway" / "cli").glob("*.py")]
    read = variables_the_settings_read() | variables_named_in(readers)
    assert sorted(set(VARIABLE.findall(text(OPERATIONS))) - read) == []


def test_the_compile_recipe_names_every_contract_proto_and_compiles(tmp_path: Path) -> None:
    recipe = re.search(r"```sh\n(protoc .*?)```", text(CONTRACT), re.DOTALL)
    assert recipe is not None
    named = re.findall(r"gongji/v1/\w+\.proto", recipe.group(1))
    protos = ROOT / "protos"
    assert sorted(named) == sorted(str(p.relative_to(protos)) for p in (protos / "gongji/v1").glob("*.proto"))
    standard = importlib.resources.files("grpc_tools") / "_proto"
    googleapis = Path(status_proto_folder())
    out = tmp_path / "contract.pb"
    argv = ["protoc", "-I", str(protos), "-I", str(standard), "-I", str(googleapis),
            f"--descriptor_set_out={out}", *(str(protos / n) for n in named),
            str(googleapis / "google/rpc/status.proto"), str(googleapis / "google/rpc/error_details.proto")]
    assert protoc.main(argv) == 0
    assert out.stat().st_size > 0


def status_proto_folder() -> str:
    """The folder holding google/rpc/status.proto as googleapis-common-protos installs it."""
    from google.rpc import status_pb2

    return str(Path(status_pb2.__file__).parents[2])
