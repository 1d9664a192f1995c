"""SemVer 2.0 parsing, the byte sort key and npm ranges (app/assets/semver.py)."""

from __future__ import annotations

import random

import pytest

from app.assets.semver import (
    InvalidVersionError,
    parse_range,
    parse_version,
    sort_key,
    without_build,
)

# SemVer 2.0 §11, in ascending precedence, plus neighbours that stress the encoding.
SPEC_ORDER = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
]

WIDER_ORDER = [
    "0.0.0",
    "0.0.1",
    "0.1.0",
    "0.9.9",
    "1.0.0-0",
    "1.0.0-0.0",
    "1.0.0-1",
    "1.0.0-2",
    "1.0.0-10",
    "1.0.0-256",
    "1.0.0--",
    "1.0.0-0a",
    "1.0.0-A",
    "1.0.0-Z",
    *SPEC_ORDER,
    "1.0.1-alpha",
    "1.0.1",
    "1.2.0",
    "1.10.0",
    "1.255.0",
    "1.256.0",
    "1.65536.0",
    "2.0.0-rc.1",
    "2.0.0",
    "10.0.0",
    "255.0.0",
    "256.0.0",
    "18446744073709551616.0.0",
]


def key(text: str) -> bytes:
    return sort_key(parse_version(text))


def test_spec_example_is_in_ascending_order():
    keys = [key(v) for v in SPEC_ORDER]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_wider_list_is_in_ascending_order():
    keys = [key(v) for v in WIDER_ORDER]
    assert keys == sorted(keys), [v for v, k in zip(WIDER_ORDER, keys, strict=True)]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("seed", range(20))
def test_shuffled_versions_sort_back_into_precedence_order(seed):
    shuffled = WIDER_ORDER[:]
    random.Random(seed).shuffle(shuffled)
    assert sorted(shuffled, key=key) == WIDER_ORDER


@pytest.mark.parametrize("seed", range(5))
def test_random_versions_sort_like_semantic_version(seed):
    rng = random.Random(seed)
    texts = set()
    while len(texts) < 200:
        core = ".".join(str(rng.choice([0, 1, 2, 9, 10, 11, 255, 256, 1000])) for _ in range(3))
        pre = ".".join(
            rng.choice(["alpha", "beta", "rc", "0", "1", "2", "10", "x-y"])
            for _ in range(rng.randint(0, 3))
        )
        texts.add(f"{core}-{pre}" if pre else core)
    versions = [parse_version(t) for t in texts]
    assert sorted(versions, key=sort_key) == sorted(versions)


def test_build_metadata_does_not_change_the_key():
    assert key("1.0.0+a") == key("1.0.0+b") == key("1.0.0")
    assert key("1.0.0-rc.1+x.y") == key("1.0.0-rc.1")


def test_without_build_drops_only_build_metadata():
    assert without_build(parse_version("1.2.3-rc.1+build.5")) == "1.2.3-rc.1"
    assert without_build(parse_version("1.2.3+build.5")) == "1.2.3"
    assert without_build(parse_version("1.2.3")) == "1.2.3"


@pytest.mark.parametrize(
    "text",
    [
        "1.0",
        "1",
        "v1.0.0",
        "01.0.0",
        "1.01.0",
        "1.0.01",
        "1.0.0-01",
        "1.0.0-",
        "1.0.0+",
        "1.0.0-a..b",
        "1.0.0-a_b",
        "1.0.0\n",
        " 1.0.0",
        "1.0.0 ",
        "",
        "latest",
        "1.0.0.0",
        "-1.0.0",
    ],
)
def test_invalid_versions_are_rejected(text):
    with pytest.raises(InvalidVersionError):
        parse_version(text)


def test_invalid_version_error_is_a_value_error():
    assert issubclass(InvalidVersionError, ValueError)


@pytest.mark.parametrize(
    "text", ["^1.2.0", "~1.2", ">=1.0.0 <2.0.0", "1.4.2", "*", ">=1.0.0-rc.1", "1.x"]
)
def test_valid_ranges_parse(text):
    assert parse_range(text) is not None


@pytest.mark.parametrize("text", [">=1 <", "abc", "", "   ", "^^1", "1.0.0 - "])
def test_invalid_ranges_are_rejected(text):
    with pytest.raises(InvalidVersionError):
        parse_range(text)


def test_ranges_match_like_npm():
    caret = parse_range("^1.2.0")
    assert parse_version("1.9.0") in caret
    assert parse_version("2.0.0") not in caret
    assert parse_version("1.3.0-rc.1") not in caret  # pre-releases only when named
    assert parse_version("1.2.0") in parse_range(">=1.0.0 <2.0.0")
