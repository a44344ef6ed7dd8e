"""scripts.idgen: every number it makes is a valid ID number (D1) of the sex, birth date and province asked."""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.identity import PROVINCE_PREFIXES, IdNumber, Sex, check_id_number
from province_stub.people import load_seed
from scripts.idgen import MAX_COUNT, default_area, id_numbers, main, seed_entries

TODAY = date.today()


@given(prefix=st.sampled_from(sorted(PROVINCE_PREFIXES)), born=st.dates(date(1900, 1, 1), TODAY),
       sex=st.sampled_from(Sex), count=st.integers(1, 40))
def test_every_number_is_valid_and_as_asked(prefix: str, born: date, sex: Sex, count: int) -> None:
    area = default_area(prefix + "0000")
    numbers = id_numbers(area, born, sex, count)
    assert len(numbers) == len(set(numbers)) == count
    for number in numbers:
        assert check_id_number(number, TODAY) is None
        person = IdNumber.parse(number, TODAY)
        assert (person.sex, person.birth_date, number[:6]) == (sex, born, area)


def test_every_sequence_of_a_sex_is_distinct_and_valid() -> None:
    for sex in Sex:
        numbers = id_numbers("610102", date(1992, 4, 18), sex, MAX_COUNT)
        assert len(set(numbers)) == MAX_COUNT
        assert all(check_id_number(n, TODAY) is None and IdNumber.parse(n, TODAY).sex is sex for n in numbers)
        assert "000" not in {n[14:17] for n in numbers}
    with pytest.raises(ValueError):
        id_numbers("610102", date(1992, 4, 18), Sex.MALE, MAX_COUNT + 1)


def test_the_standards_own_example_comes_out() -> None:
    # GB 11643's example, 11010519491231002X: a woman born 1949-12-31 in Beijing, sequence 002, check X.
    assert id_numbers("110105", date(1949, 12, 31), Sex.FEMALE)[0] == "11010519491231002X"


@pytest.mark.parametrize("area", ["61010", "6101021", "990102", "61O102", "６10102"])
def test_an_address_code_outside_every_province_is_refused(area: str) -> None:
    with pytest.raises(ValueError):
        id_numbers(area, date(1990, 1, 1), Sex.MALE)


def test_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--province", "610000", "--born", "1992-04-18", "--sex", "female", "--count", "2"]) == 0
    assert capsys.readouterr().out.split() == id_numbers("610102", date(1992, 4, 18), Sex.FEMALE, 2)
    for wrong in (["--province", "990000"], ["--province", "610100"], ["--born", "2999-01-01"],
                  ["--area", "650102"], ["--count", "0"]):
        args = {"--province": "610000", "--born": "1992-04-18", "--sex": "male"}
        args.update(dict(zip(wrong[::2], wrong[1::2], strict=True)))
        with pytest.raises(SystemExit) as refused:
            main([part for pair in args.items() for part in pair])
        assert refused.value.code == 2


def test_seed_entries_load_as_a_stub_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--province", "610000", "--born", "1958-11-02", "--sex", "male", "--count", "2", "--toml"])
    first = capsys.readouterr().out
    main(["--province", "610000", "--born", "2015-08-16", "--sex", "female", "--toml", "--insutype", "390"])
    seed_file = tmp_path / "610000.toml"
    seed_file.write_text('province = "610000"\n' + first + capsys.readouterr().out, encoding="utf-8")
    seed = load_seed(seed_file)
    assert seed.province == "610000" and len(seed.people) == 3
    assert [p.insutype for p in seed.people.values()] == ["310", "310", "390"]
    assert all(p.pooling_area == "610100" and p.status == "NORMAL" and p.wallet_open for p in seed.people.values())
    assert tomllib.loads(seed_entries(["610102199204180027"]))["people"][0]["name"] == "测试0027"
