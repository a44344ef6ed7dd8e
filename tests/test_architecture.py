"""The direction of dependencies (style.md), checked on the import statements of every module."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "province_stub")

GRPC = ("grpc", "grpc_status", "grpc_health", "grpc_reflection")
# The wire contract: our generated code and the protobuf runtime / well-known and google.rpc messages.
PROTOS = ("protos", "google.protobuf", "google.rpc")
SQLALCHEMY = ("sqlalchemy", "psycopg", "psycopg2", "sqlite3")
CRYPTOGRAPHY = ("cryptography",)
# One job per file: a module longer than this does several. Generated code (protoc's) is exempt.
MAX_MODULE_LINES = 400


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. gateway.store.unit_of_work
    path: str  # relative to the project root, e.g. gateway/store/unit_of_work.py
    imports: frozenset[str]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, name: str, is_package: bool) -> frozenset[str]:
    """Every module `source` imports anywhere (top level, functions, TYPE_CHECKING), as absolute names.

    `from a.b import c` yields both `a.b` and `a.b.c`, since `c` may be a submodule.
    """
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return frozenset(found)


def load_modules(packages: Iterable[str] = PACKAGES) -> list[Module]:
    modules = []
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = module_name(path)
            source = path.read_text(encoding="utf-8")
            imports = imports_of(source, name, path.name == "__init__.py")
            modules.append(Module(name, path.relative_to(ROOT).as_posix(), imports))
    return modules


MODULES = load_modules()


def within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def is_standard_library(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names


def in_package(package: str) -> list[Module]:
    return [m for m in MODULES if within(m.name, [package])]


def violations(modules: Iterable[Module], forbidden: Callable[[str], bool]) -> list[str]:
    return sorted(f"{m.path} imports {imported}" for m in modules for imported in m.imports if forbidden(imported))


# -- the scanner itself ------------------------------------------------------------------------------


def test_the_scanner_sees_every_kind_of_import() -> None:
    source = """
from __future__ import annotations
import os.path, json as j
from typing import TYPE_CHECKING
from . import sibling
from .. import errors
from ..store.engine import make_engine
if TYPE_CHECKING:
    import sqlalchemy
def later() -> None:
    import grpc
"""
    found = imports_of(source, "gateway.usecases.ports", is_package=False)
    assert {
        "os.path",
        "json",
        "typing",
        "gateway.usecases.sibling",
        "gateway.errors",
        "gateway.store.engine",
        "sqlalchemy",
        "grpc",
    } <= found
    assert imports_of("from . import x", "gateway.store", is_package=True) == {"gateway.store", "gateway.store.x"}


def test_the_scanner_finds_the_layers() -> None:
    names = {m.name for m in MODULES}
    for expected in (
        "gateway.domain.transfers",
        "gateway.usecases.transfers",
        "gateway.api.servicers",
        "gateway.api.status",
        "gateway.api.interceptor",
        "gateway.api.gate",
        "gateway.usecases.runner",
        "gateway.store.unit_of_work",
        "gateway.store.repositories.transfers",
        "gateway.provinces.client",
        "gateway.app",
        "gateway.core",
        "gateway.__main__",
        "province_stub.server",
        "province_stub.client",
        "province_stub.messages",
        "province_stub.answers",
    ):
        assert expected in names
    assert "gateway.store.unit_of_work" in next(m for m in MODULES if m.name == "gateway.core").imports


def test_the_standard_library_check() -> None:
    assert is_standard_library("zoneinfo") and is_standard_library("__future__")
    assert is_standard_library("collections.abc")
    assert not is_standard_library("grpc") and not is_standard_library("sqlalchemy")
    assert not is_standard_library("gateway.domain")


# -- the rules ---------------------------------------------------------------------------------------


def test_domain_imports_only_the_standard_library_and_itself() -> None:
    assert in_package("gateway.domain")
    found = violations(
        in_package("gateway.domain"),
        lambda name: not is_standard_library(name) and not within(name, ["gateway.domain"]),
    )
    assert found == []


def test_usecases_import_no_transport_storage_or_adapters() -> None:
    # Use cases see the domain and their ports only: signatures are checked through an injected verifier.
    forbidden = (*GRPC, *PROTOS, *SQLALCHEMY, "cryptography", "gateway.api", "gateway.store", "gateway.provinces",
                 "gateway.app", "gateway.core", "gateway.security")
    found = violations(in_package("gateway.usecases"), lambda name: within(name, forbidden))
    assert found == []


def test_the_runner_is_a_use_case_layer_module_without_transport() -> None:
    # How a call runs a use case (retries on contention, the outbox woken after a change) is the use cases'
    # business: the servicers hand it their call and translate, and the runner knows nothing of gRPC.
    runner = [m for m in MODULES if m.name == "gateway.usecases.runner"]
    assert runner and violations(runner, lambda name: within(name, [*GRPC, *PROTOS, "gateway.api"])) == []
    servicers = [m for m in MODULES if m.name == "gateway.api.servicers"]
    source = (ROOT / "gateway/api/servicers.py").read_text(encoding="utf-8")
    assert servicers and "gateway.usecases.runner" in servicers[0].imports
    assert "Contention" not in source and "asyncio" not in source


def test_the_status_table_knows_only_the_domain() -> None:
    # Whatever reads the table (the errors document, a test) gets domain errors mapped to statuses, nothing else:
    # no use case, no store, no other part of the edge.
    status = [m for m in MODULES if m.name == "gateway.api.status"]
    allowed = [*GRPC, *PROTOS, "gateway.domain"]
    assert status and violations(status, lambda name: not is_standard_library(name) and not within(name, allowed)) == []


def test_the_interceptor_and_the_gate_run_no_use_case() -> None:
    # They decide how a call is let in and how it ends, whatever the call: no use case, no conversion, no servicer.
    edge = [m for m in MODULES if m.name in ("gateway.api.interceptor", "gateway.api.gate")]
    forbidden = ["gateway.usecases", "gateway.api.servicers", "gateway.api.convert", "protos"]
    assert len(edge) == 2 and violations(edge, lambda name: within(name, forbidden)) == []
    gate = [m for m in edge if m.name == "gateway.api.gate"]
    assert violations(gate, lambda name: within(name, GRPC)) == []


def test_the_member_directory_reaches_use_cases_through_their_context() -> None:
    # The provinces' CheckMember is a port of the use cases (ports.py), set in UseCaseContext by app.py: no
    # servicer is handed the outbound client to pass along.
    assert violations(in_package("gateway.api"), lambda name: within(name, ["gateway.provinces"])) == []
    servicers = (ROOT / "gateway/api/servicers.py").read_text(encoding="utf-8")
    assert "MemberDirectory" not in servicers and "members" not in servicers


def test_api_never_touches_the_database() -> None:
    found = violations(in_package("gateway.api"), lambda name: within(name, [*SQLALCHEMY, "gateway.store"]))
    assert found == []


def test_store_imports_no_grpc_protos_or_api() -> None:
    forbidden = (*GRPC, *PROTOS, "gateway.api", "gateway.provinces")
    found = violations(in_package("gateway.store"), lambda name: within(name, forbidden))
    assert found == []


def test_the_store_names_no_wire_types() -> None:
    # It stores and returns what it is given: the caller names the type of an envelope it reads back.
    store = [m for m in in_package("gateway.store") if "/migrations/" not in m.path]
    assert store
    found = [m.path for m in store if "gongji.v1." in (ROOT / m.path).read_text(encoding="utf-8")]
    assert found == []


def test_payload_types_are_named_in_one_table() -> None:
    # protos/gongji/v1/payload_types.py reads them from the descriptors; gateway, stub and tools use it (or the
    # message's DESCRIPTOR) rather than spelling a name that would drift from the contract unnoticed.
    message_name = re.compile(r"gongji\.v1\.[A-Z][A-Za-z0-9]*")
    spelled = []
    for module in [*MODULES, *load_modules(["scripts", "bench"])]:
        tree = ast.parse((ROOT / module.path).read_text(encoding="utf-8"))
        spelled += [f"{module.path}:{node.lineno} {node.value}" for node in ast.walk(tree)
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and message_name.fullmatch(node.value)]
    assert spelled == []


def _defining(modules: Iterable[Module], defines: Callable[[ast.AST], bool]) -> set[str]:
    return {m.path for m in modules
            if any(defines(node) for node in ast.walk(ast.parse((ROOT / m.path).read_text(encoding="utf-8"))))}


def test_one_beijing_time_zone() -> None:
    # gateway/domain/clock.BEIJING for the gateway and the tools; the stub, which cannot import it, has one own.
    def makes_a_zone(node: ast.AST) -> bool:
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
                and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) in ("ZoneInfo", "timezone"))

    assert _defining([*in_package("gateway"), *load_modules(["scripts", "bench"])], makes_a_zone) == {
        "gateway/domain/clock.py"}
    assert len(_defining(in_package("province_stub"), makes_a_zone)) <= 1


def test_one_id_number_masker() -> None:
    # First 6 + last 4 (D19): gateway/domain/identity.py for the gateway (its log filter too) and the tools; the
    # stub's own in province_stub/people.py.
    def masks(node: ast.AST) -> bool:
        return isinstance(node, ast.FunctionDef) and (node.name == "mask" or node.name.startswith("mask_"))

    assert _defining([*in_package("gateway"), *load_modules(["scripts", "bench"])], masks) == {
        "gateway/domain/identity.py"}
    assert _defining(in_package("province_stub"), masks) == {"province_stub/people.py"}


def test_what_ships_imports_nothing_of_the_development_tools() -> None:
    # The gateway and the stub run without the development tools: the development CA and the launcher live in
    # scripts/, which is not installed (pyproject.toml), as tests/ is not; bench/ is a program of its own.
    found = violations(MODULES, lambda name: within(name, ["scripts", "bench", "tests"]))
    assert found == []


def test_the_development_tools_lean_on_neither_the_tests_nor_the_bench() -> None:
    # tests/ and bench/ start the stack with scripts/launcher.py and use the development CA: the other way round
    # would be a cycle.
    tools = load_modules(["scripts"])
    assert {"scripts.launcher", "scripts.devtls"} <= {m.name for m in tools}
    assert violations(tools, lambda name: within(name, ["tests", "bench"])) == []


def test_one_launcher_starts_the_stack_as_processes() -> None:
    # `make run`, the benchmark and the crash tests start the stubs and the gateway through scripts/launcher.py's
    # Stack: none of them writes the command lines, the manifest or the gateway's settings a second time.
    modules = {m.name: m for m in load_modules(["scripts", "bench", "tests/crash"])}
    for user in ("scripts.devstack", "bench.run", "tests.crash.harness"):
        assert any(within(name, ["scripts.launcher"]) for name in modules[user].imports), user
    starting = ('"-m", "gateway"', '"-m", "province_stub"', "GONGJI_MANIFEST")
    starters = sorted(m.path for m in modules.values()
                      if any(text in (ROOT / m.path).read_text(encoding="utf-8") for text in starting))
    assert starters == ["scripts/launcher.py"]


def test_province_stub_never_imports_the_gateway() -> None:
    assert in_package("province_stub")
    found = violations(in_package("province_stub"), lambda name: within(name, ["gateway"]))
    assert found == []


def test_the_stubs_messages_are_built_and_signed_without_transport() -> None:
    # What a province signs is built and signed in messages.py, what the gateway answered is read in answers.py;
    # only client.py sends, so the drivers (bench, crash tests) build and check with neither a channel nor a client.
    messages = [m for m in MODULES if m.name == "province_stub.messages"]
    assert messages and violations(messages, lambda name: within(name, GRPC)) == []
    parts = [m for m in MODULES if m.name in ("province_stub.messages", "province_stub.answers")]
    assert violations(parts, lambda name: within(name, ["province_stub.client"])) == []


def test_the_gateway_never_imports_the_stubs_test_control() -> None:
    # gongji.stub.v1 steers the stub provinces in tests: it sits beside the contract's protos but is no part of it.
    found = violations(in_package("gateway"), lambda name: within(name, ["protos.gongji.stub"]))
    assert found == []


def test_provinces_keep_the_outbound_client_only() -> None:
    # The outbox loop is a driver beside app.py (gateway/outbox_loop.py); the client sends what it is handed.
    assert {m.name for m in in_package("gateway.provinces")} == {"gateway.provinces", "gateway.provinces.client"}
    loop = ["gateway.outbox_loop", "gateway.app"]
    assert violations(in_package("gateway.provinces"), lambda name: within(name, loop)) == []
    # Of the use cases, it knows their ports only: what it sends is typed (domain/outbox.py), never parsed.
    found = violations(in_package("gateway.provinces"), lambda name: within(name, ["gateway.usecases"])
                       and not within(name, ["gateway.usecases.outbox_ports", "gateway.usecases.ports"]))
    assert found == []


def test_the_outbox_loop_drives_use_cases_through_their_ports() -> None:
    # It runs the outbox's use cases and is given a sender (provinces/client.py) by app.py: no transport, no SQL.
    loop = [m for m in MODULES if m.name == "gateway.outbox_loop"]
    forbidden = (*GRPC, *PROTOS, *SQLALCHEMY, "gateway.api", "gateway.store", "gateway.provinces", "gateway.security")
    assert loop and violations(loop, lambda name: within(name, forbidden)) == []


def test_a_transfer_changes_state_in_one_place() -> None:
    # What a transfer counts against (D10, D12) is given back there when it fails: no other way round it.
    callers = [m.path for m in in_package("gateway")
               if ".transfers.change_state(" in (ROOT / m.path).read_text(encoding="utf-8")]
    assert callers == ["gateway/usecases/transfers.py"]


def test_only_the_composition_root_wires_store_and_api_together() -> None:
    allowed = {"gateway/app.py", "gateway/core.py", "gateway/__main__.py"}
    both = [
        m.path
        for m in MODULES
        if m.path not in allowed
        and any(within(name, ["gateway.store"]) for name in m.imports)
        and any(within(name, ["gateway.api"]) for name in m.imports)
    ]
    assert both == []


def test_cryptography_is_used_only_by_security() -> None:
    # province_stub is a separate program with its own signing; inside the gateway only security/ signs.
    modules = [m for m in in_package("gateway") if not within(m.name, ["gateway.security"])]
    assert violations(modules, lambda name: within(name, CRYPTOGRAPHY)) == []


def test_grpc_and_protos_stay_at_the_edges() -> None:
    # gateway.cli is the operators' gRPC client: an edge of its own, which imports nothing of the core.
    edges = ["gateway.api", "gateway.provinces", "gateway.wire", "gateway.app", "gateway.core", "gateway.__main__",
             "gateway.cli"]
    modules = [m for m in in_package("gateway") if not within(m.name, edges)]
    assert violations(modules, lambda name: within(name, (*GRPC, *PROTOS))) == []


def test_the_cli_is_only_a_client() -> None:
    # Its gRPC commands import one another, the default addresses, the Beijing time zone and the key-file reader
    # (one of each for the gateway), nothing else of ours; the package mounts gateway.cli.admin's database
    # commands (below).
    cli = [m for m in in_package("gateway.cli") if m.name != "gateway.cli.admin"]
    mine = ["gateway.cli", "gateway.addresses", "gateway.domain.clock", "gateway.security.keys"]
    assert cli and violations(cli, lambda name: within(name, ["gateway"]) and not within(name, mine)) == []
    # Only the package itself mounts the database commands (named in its GROUPS, loaded when run): a command group
    # does not lean on them.
    assert {m.path for m in cli if any(within(name, ["gateway.cli.admin"]) for name in m.imports)} == set()
    package = (ROOT / "gateway/cli/__init__.py").read_text(encoding="utf-8")
    assert '"gateway.cli.admin"' in package


def test_the_command_line_starts_without_what_only_some_commands_need() -> None:
    # `gongji stats` may run every few seconds on the gateway's own machine: its start-up loads gRPC, typer and
    # rich, not the key-file reader's cryptography, the database commands' SQLAlchemy and Alembic, the progress
    # bar of `transfers list --all`, the error details read only when a call fails, or --json's converter.
    heavy = ("cryptography", "sqlalchemy", "alembic", "grpc_status", "google.rpc", "rich.progress",
             "google.protobuf.json_format")
    probe = ("import sys, gateway.cli; gateway.cli.build(); "  # the whole command line: every group's module
             f"print(sorted(name for name in sys.modules if name.startswith({heavy!r})))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == "[]"


def test_the_default_addresses_import_nothing() -> None:
    # The settings, the CLI and the development stack all read them; the CLI must not load the core to do so.
    addresses = [m for m in MODULES if m.name == "gateway.addresses"]
    assert addresses and violations(addresses, lambda name: True) == []


def test_only_the_admin_commands_open_the_database() -> None:
    # `gongji db ...` works on the database itself, through the schema module and the settings only;
    # `gongji audit verify` and `gongji db recount` read through a unit of work and check with their use cases.
    admin = [m for m in in_package("gateway") if m.name == "gateway.cli.admin"]
    allowed = ["gateway.cli.admin", "gateway.store.schema", "gateway.config", "gateway.store.unit_of_work",
               "gateway.store.sealing",
               "gateway.usecases.audit", "gateway.usecases.monitoring", "gateway.security.signing",
               "gateway.domain.audit"]
    assert admin and violations(admin, lambda name: within(name, ["gateway"]) and not within(name, allowed)) == []
    # Of the operators' command line, only it uses the schema module; the gateway checks it at start-up.
    users = {m.path for m in MODULES if any(within(name, ["gateway.store.schema"]) for name in m.imports)}
    assert users <= {"gateway/cli/admin.py", "gateway/core.py", "gateway/__main__.py"}


def test_logging_setup_reads_only_the_settings_and_the_masker() -> None:
    logs = [m for m in in_package("gateway") if m.name == "gateway.logs"]
    allowed = ["gateway.config", "gateway.domain.identity"]
    assert logs and violations(logs, lambda name: not is_standard_library(name) and not within(name, allowed)) == []


def test_the_onboarding_scripts_are_a_provinces_code() -> None:
    # docs/onboarding.md's first signed call is what a platform's engineer reads and copies: it signs from the
    # published scheme, as province_stub does, and imports nothing of the gateway; the ID generator uses the
    # domain's check character only.
    allowed = {"scripts.signed_request": [], "scripts.idgen": ["gateway.domain.identity"]}
    for name, ours in allowed.items():
        path = ROOT / (name.replace(".", "/") + ".py")
        module = Module(name, path.relative_to(ROOT).as_posix(),
                        imports_of(path.read_text(encoding="utf-8"), name, is_package=False))
        outside = [imported for imported in module.imports
                   if within(imported, ["gateway"]) and not within(imported, ours)]
        assert outside == [], name


def is_generated(source: str) -> bool:
    return "DO NOT EDIT" in "\n".join(source.splitlines()[:5])


def test_the_generated_code_check() -> None:
    assert is_generated((ROOT / "protos/gongji/v1/common_pb2.py").read_text(encoding="utf-8"))
    assert not is_generated((ROOT / "gateway/app.py").read_text(encoding="utf-8"))


def test_no_module_is_over_the_line_limit() -> None:
    sources = {m.path: (ROOT / m.path).read_text(encoding="utf-8") for m in MODULES}
    lengths = {path: len(source.splitlines()) for path, source in sources.items() if not is_generated(source)}
    assert len(lengths) > 100
    assert {path: lines for path, lines in lengths.items() if lines > MAX_MODULE_LINES} == {}
