"""SemVer 2.0 parsing, byte-ordered sort keys and npm-style ranges (via ``semantic_version``).

The sort key lets the database order versions by SemVer precedence with a plain binary compare
(bytea on PostgreSQL, BLOB on SQLite): no collation can reorder it and no Python sort is needed.
"""

from __future__ import annotations

import re

import semantic_version as sv


class InvalidVersionError(ValueError):
    pass


# semantic_version anchors its pattern with ``$``, which also matches before a trailing newline.
_SEMVER_CHARS = re.compile(r"[0-9A-Za-z.+-]+")


def parse_version(text: str) -> sv.Version:
    """Strict SemVer 2.0 (no ``v`` prefix, no leading zeros, three numeric parts)."""
    if not isinstance(text, str) or not _SEMVER_CHARS.fullmatch(text):
        raise InvalidVersionError(f"not a SemVer 2.0 version: {text!r}")
    try:
        return sv.Version(text)
    except ValueError as exc:
        raise InvalidVersionError(f"not a SemVer 2.0 version: {exc}") from None


def parse_range(text: str) -> sv.NpmSpec:
    """An npm-style range such as ``^1.2.0``, ``~1.2``, ``>=1.0.0 <2.0.0``, ``1.4.2`` or ``*``."""
    if not text or not text.strip():
        raise InvalidVersionError("a version range must not be empty")
    try:
        return sv.NpmSpec(text)
    except ValueError as exc:
        raise InvalidVersionError(f"not an npm-style version range: {exc}") from None


def without_build(version: sv.Version) -> str:
    """The version with build metadata dropped: (name, this) is unique forever."""
    return str(version.truncate("prerelease"))


def _encode_number(number: int) -> bytes:
    raw = number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big")
    if len(raw) > 255:
        raise InvalidVersionError("version number is too large")
    return bytes([len(raw)]) + raw


def sort_key(version: sv.Version) -> bytes:
    """Bytes whose lexicographic order is SemVer precedence (build metadata ignored).

    Numbers are length-prefixed big-endian; a release (0x02) outranks any pre-release (0x01);
    numeric identifiers (0x01) rank below alphanumeric ones (0x02); a list that ends (0x00)
    ranks below one that goes on.
    """
    out = bytearray()
    for part in (version.major, version.minor, version.patch):
        out += _encode_number(part)
    if not version.prerelease:
        out.append(0x02)
        return bytes(out)
    out.append(0x01)
    for identifier in version.prerelease:
        if identifier.isdigit():
            out.append(0x01)
            out += _encode_number(int(identifier))
        else:
            out.append(0x02)
            out += identifier.encode("ascii") + b"\x00"
    out.append(0x00)
    return bytes(out)
