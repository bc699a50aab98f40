"""Every Lua script opens with the header contract, its includes expand, and calls pass the KEYS it declares."""

from __future__ import annotations

import re
from importlib import resources

import fakeredis
import pytest

from timer_redis.scripts import KEY_COUNTS, SCRIPT_NAMES, Scripts, script_source

LUA_FILES = sorted(p.name for p in resources.files("timer_redis").joinpath("lua").iterdir() if p.name.endswith(".lua"))


def test_every_lua_file_is_a_registered_script() -> None:
    assert sorted(f"{name}.lua" for name in SCRIPT_NAMES) == LUA_FILES


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_header_names_file_keys_argv_returns(name: str) -> None:
    lines = script_source(name).splitlines()
    assert lines[0].startswith(f"-- {name}.lua: "), "first line names the file and says what it does"
    header = [line for line in lines if line.startswith("-- ") and not line.startswith("-- includes/")]
    key_numbers = [int(n) for n in re.findall(r"^-- KEYS\[(\d+)\]", "\n".join(header), re.M)]
    assert key_numbers == list(range(1, KEY_COUNTS[name] + 1)), "KEYS numbered 1..n without gaps"
    assert KEY_COUNTS[name] >= 1
    assert re.search(r"^-- ARGV\[1\]", "\n".join(header), re.M)
    assert any(line.startswith("-- Returns") for line in header)
    assert any(line.startswith("-- Errors") for line in header)


PRELUDE = resources.files("timer_redis").joinpath("lua", "includes", "prelude.lua").read_text()
PRELUDE_FUNCTIONS = set(re.findall(r"^local function (\w+)", PRELUDE, re.M))


def _code(source: str) -> str:
    return re.sub(r"--.*$", "", source, flags=re.M)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_includes_paste_in_what_the_script_calls_and_nothing_else(name: str) -> None:
    source = script_source(name)
    assert "@include" not in source
    defined = set(re.findall(r"^local function (\w+)", source, re.M)) & PRELUDE_FUNCTIONS
    called = {word for word in re.findall(r"\b(\w+)\(", _code(source)) if word in PRELUDE_FUNCTIONS}
    assert called <= defined, f"called but not pasted in: {called - defined}"
    assert defined <= called, f"pasted in but never called: {defined - called}"
    assert defined, "every script uses the prelude"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_body_uses_named_locals_only(name: str) -> None:
    """KEYS[i] and ARGV[i] are copied into named locals at the top and not used raw further down."""
    source = script_source(name)
    body = [line for line in source.splitlines() if not line.startswith("--")]
    raw_uses = [line for line in body if re.search(r"\b(KEYS|ARGV)\[", line) and not line.startswith("local ")]
    # Error messages may echo the raw ARGV text; a script whose header declares a variable part (KEYS[5..]) reads
    # that part in loops.
    variadic = re.search(r"^-- (KEYS|ARGV)\[[0-9+a-z]+\.\.", source, re.M) is not None
    offending = [line for line in raw_uses if "error_reply" not in line and "bad_arg" not in line]
    assert offending == [] or variadic


def test_a_call_with_another_number_of_keys_than_the_header_is_refused() -> None:
    client = fakeredis.FakeRedis()
    with pytest.raises(ValueError, match=r"acquire\.lua takes 4 KEYS, got 1"):
        Scripts(client).run("acquire", client, ["only-one"], ["w", "s", 1, 9, "wake"])
    assert client.keys() == []
