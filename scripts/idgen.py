"""`python -m scripts.idgen`: valid resident ID numbers (GB 11643, rule D1) for a stub province's test people, and
opaque references that can never look like one."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence
from datetime import date

from gateway.domain.identity import PROVINCE_PREFIXES, Sex, check_character

_DIGITS_AS_LETTERS = str.maketrans("0123456789", "ghijklmnop")


def opaque_ref(prefix: str, length: int = 32) -> str:
    """A fresh reference (settlement, freeze, …) without digits: random hex would now and then hold what looks like
    an ID number (18 digits with a valid check character, or 15), which the gateway refuses (D19)."""
    return f"{prefix}-{uuid.uuid4().hex[:length].translate(_DIGITS_AS_LETTERS)}"


# Three sequence digits: the last one's parity is the sex (odd male, even female); 000 is left out.
_SEQUENCES = {Sex.MALE: range(1, 1000, 2), Sex.FEMALE: range(2, 1000, 2)}
MAX_COUNT = len(_SEQUENCES[Sex.FEMALE])


def default_area(province: str) -> str:
    """A county-level address code inside the province: its first city's first district (e.g. 610102)."""
    return province[:2] + "0102"


def id_numbers(area: str, born: date, sex: Sex, count: int = 1) -> list[str]:
    """`count` distinct ID numbers of people born on `born` with sex `sex`, registered at address code `area`.

    The first `count` sequence numbers of that sex, in order: the same question always gets the same answer,
    so a guide or a test can name the numbers it made.
    """
    if len(area) != 6 or not area.isascii() or not area.isdigit() or area[:2] not in PROVINCE_PREFIXES:
        raise ValueError("the address code must be 6 digits starting with a province's two (e.g. 610102)")
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"between 1 and {MAX_COUNT} numbers share an address code, birth date and sex")
    first17 = [f"{area}{born:%Y%m%d}{sequence:03d}" for sequence in _SEQUENCES[sex][:count]]
    return [digits + check_character(digits) for digits in first17]


def pooling_area(id_number: str) -> str:
    """The pooling area a stub seeds for a person: the city of the ID number's address code (650502… → 650500)."""
    return f"{id_number[:4]}00"


def seed_entries(id_numbers: Sequence[str], insutype: str = "310") -> str:
    """`[[people]]` entries of a stub seed file (province_stub/seeds/*.toml): insured, normal, wallet open.

    Each entry opens with a blank line, so that the output of several runs appended to one file reads well.
    """
    entries = []
    for number in id_numbers:
        entries.append("\n".join([
            "",
            "[[people]]",
            f'id_number = "{number}"',
            f'name = "测试{number[-4:]}"',  # synthetic, and distinct for each number
            f'pooling_area = "{pooling_area(number)}"',
            f'insutype = "{insutype}"',
            'status = "NORMAL"',
            "wallet_open = true",
            "settlement_suspended = false",
        ]))
    return "\n".join(entries) + "\n"


def _province(value: str) -> str:
    if len(value) != 6 or not value.isdigit() or not value.endswith("0000") or value[:2] not in PROVINCE_PREFIXES:
        raise argparse.ArgumentTypeError(f"{value!r} is not a province code such as 610000")
    return value


def _birth_date(value: str) -> date:
    try:
        born = date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date such as 1990-01-31") from None
    if born > date.today():
        raise argparse.ArgumentTypeError("a birth date in the future makes an invalid ID number (D1)")
    return born


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.idgen",
        description="Print valid resident ID numbers (GB 11643: address code, birth date, sequence whose last "
                    "digit is odd for a man and even for a woman, ISO 7064 MOD 11-2 check character) for test "
                    "people of a stub province.")
    parser.add_argument("--province", type=_province, required=True, help="the province code, e.g. 610000")
    parser.add_argument("--born", type=_birth_date, required=True, help="birth date, e.g. 1990-01-31")
    parser.add_argument("--sex", choices=["male", "female"], required=True)
    parser.add_argument("--count", type=int, default=1, help=f"how many distinct numbers (1-{MAX_COUNT}, default 1)")
    parser.add_argument("--area", default=None,
                        help="the county-level address code within the province (default <first two digits>0102)")
    parser.add_argument("--toml", action="store_true",
                        help="print [[people]] entries for a stub seed file instead (insured, NORMAL, wallet open)")
    parser.add_argument("--insutype", choices=["310", "390"], default="310",
                        help="with --toml: 310 employee (may give), 390 resident (may only receive); default 310")
    args = parser.parse_args(argv)
    area = args.area or default_area(args.province)
    if area[:2] != args.province[:2]:
        parser.error(f"address code {area} is not within province {args.province}")
    try:
        numbers = id_numbers(area, args.born, Sex.MALE if args.sex == "male" else Sex.FEMALE, args.count)
    except ValueError as error:
        parser.error(str(error))
    sys.stdout.write(seed_entries(numbers, args.insutype) if args.toml else "\n".join(numbers) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
