"""How a `gongji` command gives way to the gateway and its database on the host they share.

An operator's command, or a monitoring job running `gongji stats` every few seconds, spends most of its
short life starting Python, gRPC, typer and rich: a tenth of a second or more of a core. Two things keep
that off the provinces' calls:
- a lower CPU priority (GONGJI_CLI_NICE, added to the caller's niceness; default 10, 0 keeps it), which
  ranks the command behind the other processes of its scheduling group;
- on Linux, the shortest time slice the scheduler grants (0.1 ms), asked for through `sched_setattr`: since
  Linux 6.12 the scheduler lets a running process finish its slice before a woken one takes the core, so a
  process woken beside the command (the gateway, a database backend) waits for at most 0.1 ms of it instead
  of its default slice (1.4 ms on two cores). Earlier kernels ignore the request.
Both are done before anything heavy is loaded.
"""

from __future__ import annotations

import os
import struct
import sys

NICENESS_DEFAULT = 10
NICENESS_VARIABLE = "GONGJI_CLI_NICE"
SLICE_NS = 100_000  # the shortest slice Linux takes for a process of the normal classes

# Python's os module does not wrap sched_getattr and sched_setattr: their numbers, by machine.
_SCHED_CALLS = {"x86_64": (315, 314), "aarch64": (275, 274)}  # (get, set)
# struct sched_attr as of Linux 4.13 (SCHED_ATTR_SIZE_VER1): size, policy, flags, nice, priority, runtime,
# deadline, period, utilisation clamps; for the normal classes, runtime is the slice.
_SCHED_ATTR = struct.Struct("=IIQiIQQQII")
_NORMAL_CLASSES = (0, 3)  # SCHED_OTHER, SCHED_BATCH: an idle or real-time command keeps its class as it is
_RESET_ON_FORK = 0x01  # the one flag sched_setattr keeps from what sched_getattr reports


def yield_cpu() -> None:
    """Lower this process's CPU priority by GONGJI_CLI_NICE (default 10) and, when it lowers it, shorten its
    time slice. A value that is not a whole number from 0 to 19 is a usage error (exit code 2)."""
    raw = (os.environ.get(NICENESS_VARIABLE) or str(NICENESS_DEFAULT)).strip()  # empty: the default
    if not (raw.isascii() and raw.isdigit() and 0 <= int(raw) <= 19):
        print(f"error: {NICENESS_VARIABLE} must be a whole number from 0 to 19, not {raw!r}", file=sys.stderr)
        raise SystemExit(2)
    if int(raw):
        os.nice(int(raw))  # only ever raises the niceness, which every process may do
        shorten_slice()


def shorten_slice() -> None:
    """Ask Linux for the shortest time slice, keeping the scheduling class and niceness. Best effort: on
    another system or machine, or where the call is refused, the command runs with the slice it has."""
    calls = _SCHED_CALLS.get(os.uname().machine) if sys.platform == "linux" else None
    if calls is None:
        return
    import ctypes  # here: only where it is used

    libc = ctypes.CDLL(None, use_errno=True)
    get, set_ = calls
    attr = ctypes.create_string_buffer(_SCHED_ATTR.size)
    if libc.syscall(get, 0, attr, _SCHED_ATTR.size, 0) != 0:
        return
    _, policy, flags, nice, *_ = _SCHED_ATTR.unpack(attr.raw)
    if policy not in _NORMAL_CLASSES:
        return
    wanted = _SCHED_ATTR.pack(_SCHED_ATTR.size, policy, flags & _RESET_ON_FORK, nice, 0, SLICE_NS, 0, 0, 0, 0)
    libc.syscall(set_, 0, ctypes.create_string_buffer(wanted, _SCHED_ATTR.size), 0)  # a refusal changes nothing
