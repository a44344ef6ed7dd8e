"""docs/onboarding.md run as written: a third province joins a running `make run` and makes its first signed call."""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "onboarding.md"
VENV_BIN = Path(sys.executable).parent
# A marker comment, then the fenced block it describes.
STEP = re.compile(r"<!-- check: (\w+) -->\n```(\w*)\n(.*?)```", re.DOTALL)
KINDS = {"run", "fails", "serve", "output", "shape"}
# The guide names `make run`'s addresses; the test moves each to a free port (the only change it makes).
GUIDE_ADDRESSES = ("127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50063", "127.0.0.1:50073")
STEP_TIMEOUT_S = 60


@dataclass(frozen=True)
class Step:
    kind: str  # run | fails | serve: shell commands; output | shape: what the command before prints
    language: str
    text: str


def guide_steps() -> list[Step]:
    return [Step(kind, language, text) for kind, language, text in STEP.findall(GUIDE.read_text(encoding="utf-8"))]


def test_every_command_of_the_guide_is_a_checked_step() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    steps = guide_steps()
    assert {step.kind for step in steps} <= KINDS
    commands = [step for step in steps if step.kind in ("run", "fails", "serve")]
    # No shell block escapes the check: each one is a step.
    assert len(re.findall(r"```sh\n", guide)) == len(commands) and all(s.language == "sh" for s in commands)
    assert [step.kind for step in steps if step.kind == "serve"] == ["serve"]
    for before, after in itertools.pairwise(steps):
        if after.kind in ("output", "shape"):
            assert before.kind in ("run", "fails"), "an output follows the command that prints it"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Lines:
    """A process's output lines, read as they come (so a wait for a line has a deadline)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self._queue.put(line) for line in process.stdout or []], daemon=True).start()

    def wait_for(self, text: str, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.seen):
            assert self.process.poll() is None, f"{what} exited:\n" + "".join(self.seen)
            assert time.monotonic() < deadline, f"{what} did not print {text!r}:\n" + "".join(self.seen)
            try:
                self.seen.append(self._queue.get(timeout=1))
            except queue.Empty:
                continue


@contextmanager
def running(args: list[str], cwd: Path, env: dict[str, str], ready: str, what: str) -> Iterator[Lines]:
    """A process in a session of its own (stopped with SIGTERM, all of it), once it has printed `ready`."""
    process = subprocess.Popen(args, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        lines = Lines(process)
        lines.wait_for(ready, what)
        yield lines
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def same_shape(shown: Any, got: Any) -> bool:
    """The same keys at every level (values differ: a signature is new at every run)."""
    if isinstance(shown, dict):
        return isinstance(got, dict) and shown.keys() == got.keys() and all(
            same_shape(shown[key], got[key]) for key in shown)
    return not isinstance(got, dict | list)


def check_output(step: Step, printed: str) -> None:
    if step.kind == "shape":
        assert same_shape(json.loads(step.text), json.loads(printed)), printed
    elif step.language == "json":
        assert json.loads(printed) == json.loads(step.text), printed
    else:  # line by line, blank lines and the spaces around each line aside
        assert lines_of(printed) == lines_of(step.text), printed


def lines_of(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_a_third_province_joins_make_run_as_the_guide_says(tmp_path: Path) -> None:
    assert (VENV_BIN / "grpcurl").exists(), "grpcurl is not installed beside python: run `make setup`"
    moved = {address: f"127.0.0.1:{free_port()}" for address in GUIDE_ADDRESSES}
    gateway, ops = moved["127.0.0.1:50051"], moved["127.0.0.1:50052"]
    # The guide's commands run in a folder laid out as the project's: .venv/ and var/ (make run's, here).
    (tmp_path / ".venv").symlink_to(VENV_BIN.parent)
    clean = {name: value for name, value in os.environ.items() if not name.startswith("GONGJI_")}
    stack_env = {**clean, "GONGJI_VAR": str(tmp_path / "var"), "GONGJI_LISTEN": gateway, "GONGJI_OPS_LISTEN": ops,
                 "GONGJI_METRICS_LISTEN": "127.0.0.1:0",
                 **{f"GONGJI_STUB_{code}{part}": f"127.0.0.1:{free_port()}"
                    for code in ("650000", "620000") for part in ("", "_CONTROL")}}
    step_env = {**clean, "PYTHONPATH": str(ROOT)}

    def shell(step: Step) -> list[str]:
        script = step.text
        for address, free in moved.items():
            script = script.replace(address, free)
        return ["bash", "-c", ("set -euo pipefail\n" if step.kind == "run" else "") + script]

    with running([sys.executable, "-m", "scripts.devstack"], ROOT, stack_env, "Ctrl-C stops everything",
                  "make run"):
        printed = ""
        with ExitStack() as servers:
            for step in guide_steps():
                if step.kind == "serve":
                    servers.enter_context(running(shell(step), tmp_path, step_env, "serving on", "the stub"))
                elif step.kind in ("run", "fails"):
                    done = subprocess.run(shell(step), cwd=tmp_path, env=step_env, text=True, capture_output=True,
                                          timeout=STEP_TIMEOUT_S)
                    printed = done.stdout + done.stderr
                    if step.kind == "run":
                        assert done.returncode == 0, f"{step.text}\n{printed}"
                        printed = done.stdout
                    else:
                        assert done.returncode != 0, f"{step.text}\n{printed}"
                else:
                    check_output(step, printed)

