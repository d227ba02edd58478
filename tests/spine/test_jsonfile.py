"""Bounded JSON reading (focusseg.io.jsonfile): deep nesting, huge numbers, NaN and oversize files are one
error naming the file, never RecursionError / ValueError."""

from __future__ import annotations

import pytest

from focusseg.errors import FocussegError, PlanError
from focusseg.io.jsonfile import MAX_JSON_DEPTH, loads_bounded, read_json


@pytest.mark.parametrize("text, words", [
    ("[" * 100_000, "nested"),
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested"),
    ('{"n": ' + "9" * 5000 + "}", "digits"),
    ('{"x": 1.' + "5" * 5000 + "}", "characters"),
    ("{'single': 1}", "not valid JSON"),
    (b"\xff\xfe{}", "UTF-8"),
])
def test_refused_with_one_line(text, words, tmp_path):
    path = tmp_path / "plan.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(PlanError) as info:
        read_json(path, PlanError)
    assert words in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_nan_refused_only_when_asked():
    assert loads_bounded('{"a": NaN}')["a"] != 0
    with pytest.raises(FocussegError, match="NaN"):
        loads_bounded('{"a": NaN}', allow_nan=False)
    with pytest.raises(FocussegError, match="Infinity"):
        loads_bounded('[-Infinity]', allow_nan=False)


def test_size_cap_and_plain_values(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "1," * 1000 + "1]")
    with pytest.raises(FocussegError, match="larger than"):
        read_json(path, max_bytes=100)
    assert read_json(path) == [1] * 1001
    nested = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert loads_bounded(nested) == loads_bounded(nested)
    assert loads_bounded('{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(FocussegError, match="cannot be read"):
        read_json(tmp_path / "absent.json")
