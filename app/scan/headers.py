"""Facts from the headers of formats that hold data only: safetensors, GGUF and ONNX.

Each parser reads the header alone, through a bounded reader, and never fails on a damaged
file: what it cannot read becomes a finding. None of these formats can run code when loaded,
so none of their findings refuses the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from typing import Any

from app.scan.blobio import Heartbeat, LimitError, RangeReader, TruncatedError, read_range
from app.storage import BlobStore

MiB = 1024 * 1024
SAFETENSORS_MAX_HEADER = 100 * MiB  # the limit the safetensors library itself enforces
GGUF_MAX_HEADER = 64 * MiB  # metadata (tokenizer vocabularies included) and tensor infos
GGUF_MAX_TENSORS = 1_000_000
GGUF_MAX_KV = 1_000_000
GGUF_MAX_DIMS = 8
GGUF_KEPT_STRING = 4096  # longer string values are skipped, not read


@dataclasses.dataclass
class Facts:
    dtypes: set[str] = dataclasses.field(default_factory=set)
    tensor_count: int | None = None
    parameter_count: int | None = None
    architecture: str | None = None
    context_length: int | None = None
    findings: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (severity, msg)

    def warn(self, message: str) -> None:
        self.findings.append(("warning", message))

    def info(self, message: str) -> None:
        self.findings.append(("info", message))


# --- safetensors ----------------------------------------------------------------------------


def looks_like_safetensors(prefix: bytes) -> bool:
    """An 8-byte little-endian header length, then a JSON object.

    The length must be under 4 GiB: its top four bytes are then zero, which no pickle that does
    anything can open with (a pickle must never pass for a safetensors file, which is not
    checked for imports). A length past the end of the file is a truncated file, reported by
    ``safetensors_facts``."""
    if len(prefix) < 10:
        return False
    (length,) = struct.unpack_from("<Q", prefix)
    return prefix[8:9] == b"{" and 2 <= length < 2**32


def safetensors_facts(store: BlobStore, key: str, size: int, heartbeat: Heartbeat) -> Facts:
    facts = Facts()
    (length,) = struct.unpack("<Q", read_range(store, key, 0, 8))
    if length > SAFETENSORS_MAX_HEADER:
        facts.warn(
            f"safetensors header is {length:,} bytes, over the {SAFETENSORS_MAX_HEADER // MiB} MiB "
            "that loaders accept: tensor facts were not read"
        )
        return facts
    if 8 + length > size:
        facts.warn(
            f"safetensors header says {length:,} bytes but the file has only {size:,}: "
            "it is truncated, tensor facts were not read"
        )
        return facts
    raw = read_range(store, key, 8, length, heartbeat)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        facts.warn("safetensors header is not valid JSON: the file is damaged or truncated")
        return facts
    if not isinstance(header, dict):
        facts.warn("safetensors header is not a JSON object: the file is damaged")
        return facts
    tensors, parameters, data_end, malformed = 0, 0, 0, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        parsed = _safetensors_entry(entry)
        if parsed is None:
            malformed.append(name)
            continue
        dtype, shape, end = parsed
        tensors += 1
        parameters += math.prod(shape)
        facts.dtypes.add(dtype)
        data_end = max(data_end, end)
    facts.tensor_count, facts.parameter_count = tensors, parameters
    if malformed:
        facts.warn(
            f"safetensors header has {len(malformed)} malformed tensor entries "
            f"(first: {malformed[0][:100]!r}); they are not counted"
        )
    if 8 + length + data_end > size:
        facts.warn(
            f"safetensors tensor data ends at byte {8 + length + data_end:,} but the file has "
            f"{size:,} bytes: it is truncated"
        )
    return facts


def _safetensors_entry(entry: Any) -> tuple[str, list[int], int] | None:
    if not isinstance(entry, dict):
        return None
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    ints = (
        isinstance(shape, list)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(v) is int and v >= 0 for v in [*shape, *offsets])
    )
    if not isinstance(dtype, str) or not ints:
        return None
    assert isinstance(shape, list) and isinstance(offsets, list)
    return dtype, shape, offsets[1]


# --- GGUF -----------------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"

# ggml's tensor types (enum ggml_type in ggml.h); the gaps are types that were removed.
GGML_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}  # fmt: skip

# GGUF metadata value types: id -> struct format of a scalar (8 string, 9 array)
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
                 12: "d"}  # fmt: skip
_GGUF_STRING, _GGUF_ARRAY = 8, 9


class _GGUFError(Exception):
    pass


class _GGUFHeader:
    def __init__(self, reader: RangeReader, endian: str, version: int) -> None:
        self.reader, self.endian = reader, endian
        self.length_format = "I" if version == 1 else "Q"  # v1 used 32-bit counts

    def unpack(self, fmt: str) -> Any:
        data = self.reader.read(struct.calcsize(fmt))
        return struct.unpack(self.endian + fmt, data)[0]

    def length(self) -> int:
        return int(self.unpack(self.length_format))

    def string(self, keep: int = GGUF_KEPT_STRING) -> str | None:
        n = self.length()
        if n > keep:
            self.reader.skip(n)
            return None
        return self.reader.read(n).decode("utf-8", errors="replace")

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _GGUF_SCALARS:
            return self.unpack(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            return self.string()
        if kind == _GGUF_ARRAY and depth < 4:
            item_kind, count = self.unpack("I"), self.length()
            if item_kind in _GGUF_SCALARS:
                self.reader.skip(count * struct.calcsize(_GGUF_SCALARS[item_kind]))
            else:
                for _ in range(count):
                    self.value(item_kind, depth + 1)
            return None  # arrays (vocabularies) are skipped, never kept
        raise _GGUFError(f"unknown metadata value type {kind}")


def gguf_facts(store: BlobStore, key: str, size: int, heartbeat: Heartbeat) -> Facts:
    facts = Facts()
    reader = RangeReader(store, key, start=0, limit=GGUF_MAX_HEADER, size=size, heartbeat=heartbeat)
    try:
        _read_gguf(reader, facts)
    except TruncatedError:
        facts.warn("GGUF header is truncated: the facts shown are partial")
    except LimitError:
        facts.warn(
            f"GGUF header is larger than {GGUF_MAX_HEADER // MiB} MiB: the facts shown are partial"
        )
    except (_GGUFError, struct.error) as exc:
        facts.warn(f"GGUF header is damaged ({exc}): the facts shown are partial")
    finally:
        reader.close()
    return facts


def _read_gguf(reader: RangeReader, facts: Facts) -> None:
    reader.read(4)  # magic
    raw_version = reader.read(4)
    endian = "<"
    version = struct.unpack("<I", raw_version)[0]
    if version & 0xFFFF == 0:  # a big-endian file reads as 0x0N000000
        endian, version = ">", struct.unpack(">I", raw_version)[0]
    if version not in (1, 2, 3):
        raise _GGUFError(f"unsupported version {version}")
    header = _GGUFHeader(reader, endian, version)
    tensor_count, kv_count = header.length(), header.length()
    if tensor_count > GGUF_MAX_TENSORS or kv_count > GGUF_MAX_KV:
        raise _GGUFError(f"implausible counts ({tensor_count} tensors, {kv_count} metadata keys)")
    facts.tensor_count, facts.parameter_count = tensor_count, 0
    lengths: dict[str, int] = {}
    for _ in range(kv_count):
        name = header.string() or ""
        kind = header.unpack("I")
        value = header.value(kind)
        if name == "general.architecture" and isinstance(value, str):
            facts.architecture = value
        elif name.endswith(".context_length") and type(value) is int:
            lengths[name] = value
    if facts.architecture is not None:
        facts.context_length = lengths.get(f"{facts.architecture}.context_length")
    counted = 0
    for _ in range(tensor_count):
        header.string(keep=0)  # the name
        dims = header.unpack("I")
        if dims > GGUF_MAX_DIMS:
            raise _GGUFError(f"a tensor with {dims} dimensions")
        shape = [header.unpack("Q") for _ in range(dims)]
        kind = header.unpack("I")
        header.unpack("Q")  # offset into the data section
        facts.dtypes.add(GGML_TYPES.get(kind, f"GGML_TYPE_{kind}"))
        facts.parameter_count += math.prod(shape)
        counted += 1
    facts.tensor_count = counted


# --- ONNX -----------------------------------------------------------------------------------

# ModelProto fields and their protobuf wire types (0 varint, 2 length-delimited)
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}
_ONNX_MAX_IR_VERSION = 64


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("unterminated varint")


def onnx_ir_version(prefix: bytes) -> int | None:
    """Best effort: a protobuf ModelProto starts with ``ir_version`` (field 1) followed by
    another ModelProto field of the right wire type. The ir_version, or None."""
    try:
        if prefix[:1] != b"\x08":
            return None
        ir_version, pos = _varint(prefix, 1)
        if not 1 <= ir_version <= _ONNX_MAX_IR_VERSION:
            return None
        tag, _ = _varint(prefix, pos)
    except (ValueError, IndexError):
        return None
    return ir_version if _ONNX_FIELDS.get(tag >> 3) == (tag & 7) else None
