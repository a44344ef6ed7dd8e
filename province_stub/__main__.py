"""python -m province_stub: parse the command line, configure logging, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import tomllib
from pathlib import Path

import uvloop

from province_stub.people import SEEDS_DIR, load_seed
from province_stub.refusals import DEFAULT_MAX_CLOCK_SKEW_S
from province_stub.server import StubConfig, is_loopback, start_stub
from province_stub.state import Behaviour, ConfirmMode, ConsentMode


def _confirm(value: str) -> tuple[ConfirmMode, int]:
    """immediate | delay:MS | never | decline."""
    mode, _, delay = value.partition(":")
    try:
        parsed = ConfirmMode(mode)
        delay_ms = int(delay) if delay else 0
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected immediate, delay:MS, never or decline, not {value!r}"
        ) from None
    if (parsed is ConfirmMode.DELAY) != bool(delay) or delay_ms < 0:
        raise argparse.ArgumentTypeError(f"expected immediate, delay:MS, never or decline, not {value!r}")
    return parsed, delay_ms


def _consent(value: str) -> ConsentMode:
    """accept | face | guardian | refuse | never."""
    try:
        return ConsentMode(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(m.value for m in ConsentMode)}, not {value!r}"
        ) from None


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return number


def parse_args(argv: list[str] | None = None) -> StubConfig:
    parser = argparse.ArgumentParser(
        prog="python -m province_stub", description="A stub provincial platform for the Gongji gateway."
    )
    parser.add_argument("--province", required=True, help="province code, e.g. 650000")
    parser.add_argument("--name", default="", help="display name, e.g. 新疆")
    parser.add_argument("--listen", default="127.0.0.1:50061",
                        help="host:port of the inbox the gateway calls (ProvinceInbox, health; port 0: any)")
    parser.add_argument(
        "--control-listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="loopback host:port of the test-control service StubControl (tests, make demo, the bench); "
        "with --tls-dir it also requires an operator's certificate (default 127.0.0.1:0, printed at start)",
    )
    parser.add_argument("--gateway", default="127.0.0.1:50051", help="the gateway's province-facing address")
    parser.add_argument(
        "--keys-dir",
        type=Path,
        default=Path("var/keys"),
        help="own key, and other provinces' public keys (the gateway's are asked of the gateway)",
    )
    parser.add_argument("--key-id", default="", help="own signing key id (default <province>-k1)")
    parser.add_argument("--seed", type=Path, default=None, help="seed file (default the packaged one)")
    parser.add_argument(
        "--confirm",
        type=_confirm,
        default=(ConfirmMode.IMMEDIATE, 0),
        metavar="MODE",
        help="immediate | delay:MS | never | decline (default immediate)",
    )
    parser.add_argument(
        "--consent",
        type=_consent,
        default=ConsentMode.ACCEPT,
        metavar="MODE",
        help="answer consent requests: accept (face at 16+, else guardian) | face | guardian | refuse | never",
    )
    parser.add_argument(
        "--fail-next", type=_non_negative, default=0, metavar="N", help="fail the next N inbox calls"
    )
    parser.add_argument(
        "--latency-ms", type=_non_negative, default=0, metavar="N", help="delay every inbox call"
    )
    parser.add_argument(
        "--reject-reason", default="", metavar="REASON", help="reject every delivery with this"
    )
    parser.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        help="mutual TLS: a folder with ca.crt and province-<code>.crt/.key; the inbox then obeys only a "
        "certificate whose URI subjectAltName is gongji:gateway (default: plaintext, no caller checked)",
    )
    parser.add_argument(
        "--max-clock-skew",
        type=_positive,
        default=DEFAULT_MAX_CLOCK_SKEW_S,
        metavar="SECONDS",
        help="refuse a gateway message whose created_at is further than this from our clock "
        f"(STALE_MESSAGE; default {DEFAULT_MAX_CLOCK_SKEW_S:.0f})",
    )
    args = parser.parse_args(argv)
    if not is_loopback(args.control_listen):
        parser.error(f"--control-listen must be a loopback address (127.0.0.1, ::1, localhost), "
                     f"not {args.control_listen}: the stub's control service is for this machine only")
    mode, delay_ms = args.confirm
    config = StubConfig(
        province=args.province,
        name=args.name,
        listen=args.listen,
        control_listen=args.control_listen,
        gateway=args.gateway,
        keys_dir=args.keys_dir,
        key_id=args.key_id,
        seed=args.seed,
        tls_dir=args.tls_dir,
        max_clock_skew_s=args.max_clock_skew,
        behaviour=Behaviour(
            confirm_mode=mode,
            confirm_delay_ms=delay_ms,
            fail_next_calls=args.fail_next,
            latency_ms=args.latency_ms,
            reject_reason=args.reject_reason,
            consent_mode=args.consent,
        ),
    )
    problem = _seed_problem(config)
    if problem:
        parser.error(problem)
    return config


def _seed_problem(config: StubConfig) -> str:
    """Why the seed file cannot serve this province, in words an integration engineer can act on."""
    path = config.seed_path
    if config.seed is None and not path.exists():
        packaged = ", ".join(sorted(p.stem for p in SEEDS_DIR.glob("*.toml")))
        return (f"no packaged seed for province {config.province} (packaged: {packaged}); "
                f"give --seed FILE, laid out like {SEEDS_DIR / '610000.toml'}")
    try:
        seed = load_seed(path)
    except OSError as error:
        return f"cannot read seed {path}: {error.strerror}"
    except (tomllib.TOMLDecodeError, KeyError, ValueError) as error:
        return f"seed {path} is not a valid seed file: {error!s}"
    if seed.province != config.province:
        return f"seed {path} is for province {seed.province}, not {config.province}"
    return ""


async def _serve(config: StubConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stub = await start_stub(config)
    # Launchers wait for this line, so it is flushed at once.
    print(f"stub province {config.province} serving on {stub.address} (key {stub.key_id}), "
          f"control on {stub.control_address}", flush=True)
    try:
        await stop.wait()
    finally:
        await stub.stop(grace_s=2.0)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop.run(_serve(config))


if __name__ == "__main__":
    main()
