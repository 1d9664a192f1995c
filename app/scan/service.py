"""The file-safety scan of a registration (CONTRACT.md §4 ``artifact``, §5 "Scan").

``scan_blob`` is called by the registration pipeline's ``scan`` step with the asset's blob. It
tells the format from the first bytes (never from a name), reads only what that format needs to
be judged and described, and returns the ``artifact`` document, whether the file is unsafe
(the step then rejects with ``UNSAFE_CONTENT``) and one sentence for the step's detail.

Pickles are disassembled, never unpickled (see ``app.scan.pickles`` for the policy). Memory is
bounded whatever the blob's size: headers are read through bounded readers, and zip archives
and pickles through a seekable file that fetches ranges from the store (a local store's file
is opened directly, an optimisation only).

``artifact`` always has every key: ``architecture`` and ``context_length`` are null except for
GGUF, and ``tensor_count`` / ``parameter_count`` are null where the format does not tell them
cheaply (pickles, ONNX, unknown): null means "not known", never "none".
"""

from __future__ import annotations

import dataclasses
import io
import pickletools
from collections.abc import Callable
from typing import Any

from app.scan.blobio import open_seekable, read_range
from app.scan.headers import (
    GGUF_MAGIC,
    Facts,
    gguf_facts,
    looks_like_safetensors,
    onnx_ir_version,
    safetensors_facts,
)
from app.scan.pickles import (
    PickleReport,
    ZipReport,
    describe_import,
    scan_pickle_stream,
    scan_zip,
    storage_dtypes,
)
from app.storage import BlobStore

PREFIX_BYTES = 64 * 1024  # what format detection looks at
MAX_LISTED = 20  # imports named one by one per severity; the rest are counted
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
_REEXPORT = "re-export the weights as safetensors"
_PROTOCOL_0_STARTS = frozenset(b"(}])cNIJKLMFSVUTdlt")  # opcodes a protocol 0/1 pickle opens with


class BlobMissingError(LookupError):
    """There is no object under the key (the checksum step reports ``BLOB_NOT_FOUND`` first)."""


@dataclasses.dataclass(frozen=True)
class ScanOutcome:
    artifact: dict[str, Any]  # the asset's ``artifact`` document
    unsafe: bool  # True: reject the asset with UNSAFE_CONTENT
    detail: str  # one sentence for the scan step's detail (and the rejection message)


def scan_blob(
    store: BlobStore, key: str, *, heartbeat: Callable[[], None] | None = None
) -> ScanOutcome:
    """Judge and describe the blob under ``key`` (CONTRACT §4 ``artifact``, §5 "Scan").

    Called by the registration pipeline's ``scan`` step; ``heartbeat`` is called while big
    things are read (it may raise, e.g. a lost lease, which propagates). Reads the store only,
    writes nothing and commits nothing, so it is idempotent: the same bytes always give the
    same outcome. Never fails on a damaged file (that is a finding); raises
    ``BlobMissingError`` when there is no object and lets the store's ``StorageError``
    through (worth retrying).
    """
    beat = heartbeat or _noop
    size = store.size(key)
    if size is None:
        raise BlobMissingError(key)
    if size == 0:
        return _outcome(
            "unknown", Facts(findings=[("info", "the file is empty: nothing was checked")])
        )
    prefix = read_range(store, key, 0, min(size, PREFIX_BYTES), beat)
    if prefix.startswith(GGUF_MAGIC):
        return _outcome("gguf", gguf_facts(store, key, size, beat))
    if prefix.startswith(_ZIP_MAGICS):
        with open_seekable(store, key, size, beat) as fh:
            return _zip_outcome(scan_zip(fh, beat))
    if looks_like_safetensors(prefix):
        return _outcome("safetensors", safetensors_facts(store, key, size, beat))
    if _looks_like_pickle(prefix, size):
        with open_seekable(store, key, size, beat) as fh:
            report = scan_pickle_stream(fh, size, "the pickle", beat)
        facts = Facts(dtypes=storage_dtypes(report))
        _pickle_findings("the pickle", report, facts)
        facts.info("tensor and parameter counts are not read from pickles")
        return _outcome("pickle", facts)
    ir_version = onnx_ir_version(prefix)
    if ir_version is not None:
        facts = Facts()
        facts.info(
            f"ONNX model (IR version {ir_version}): its graph is not inspected, so tensor "
            "facts are unknown; ONNX holds no Python code"
        )
        return _outcome("onnx", facts)
    facts = Facts()
    facts.info(
        "the format is not one the scan knows (safetensors, GGUF, pickle, PyTorch zip, ONNX): "
        "nothing was checked"
    )
    return _outcome("unknown", facts)


def _noop() -> None:
    return None


def _looks_like_pickle(prefix: bytes, size: int) -> bool:
    """Protocol 2+ opens with PROTO; an older pickle is recognised by its opcodes parsing
    cleanly to STOP (or to the end of the prefix, for a large file)."""
    if len(prefix) >= 2 and prefix[0] == 0x80 and prefix[1] <= 5:
        return True
    if not prefix or prefix[0] not in _PROTOCOL_0_STARTS:
        return False
    opcodes = 0
    try:
        for opcode, _arg, _pos in pickletools.genops(io.BytesIO(prefix)):
            opcodes += 1
            if opcode.name == "STOP":
                return opcodes >= 2
    except Exception:  # any parse error: not a pickle, or a prefix cut mid-opcode
        return len(prefix) < size and opcodes >= 16
    return False


def _pickle_findings(label: str, report: PickleReport, facts: Facts) -> None:
    for severity, reason in (
        ("critical", "which can run code when the file is loaded"),
        ("warning", "which is not a known tensor type: it runs when the file is loaded"),
    ):
        names = sorted(
            describe_import(m, n) for (m, n), v in report.imports.items() if v == severity
        )
        for name in names[:MAX_LISTED]:
            facts.findings.append((severity, f"{label} imports {name}, {reason}"))
        if len(names) > MAX_LISTED:
            facts.findings.append(
                (severity, f"{label} makes {len(names) - MAX_LISTED} more such imports")
            )
    if report.too_large:
        facts.findings.append(
            ("critical", f"{label} {report.too_large}: too large to check completely")
        )
    if report.unreadable:
        facts.findings.append(
            ("critical", f"{label} has imports whose names could not be read: not checked")
        )
    if report.damaged:
        facts.warn(f"{label} breaks off before its end: the imports before the break were checked")


def _zip_outcome(report: ZipReport) -> ScanOutcome:
    facts = Facts()
    if report.error is not None:
        facts.findings.append(
            ("critical", f"the zip archive could not be read ({report.error}): not checked")
        )
        return _outcome("unknown", facts)
    for name in report.unreadable:
        facts.findings.append(
            ("critical", f"{name} could not be read from the archive: not checked")
        )
    for name, pickle_report in sorted(report.pickles.items()):
        _pickle_findings(name, pickle_report, facts)
        facts.dtypes |= storage_dtypes(pickle_report)
    if report.torchscript:
        facts.warn("the archive holds TorchScript code, which torch.jit.load runs")
    if report.is_torch:
        facts.info("tensor and parameter counts are not read from PyTorch checkpoints")
        return _outcome("pytorch_zip", facts)
    facts.info(
        f"a zip archive without data.pkl, not a PyTorch checkpoint: {len(report.pickles)} "
        "pickle members checked, nothing else"
    )
    return _outcome("unknown", facts)


_INT64_MAX = 2**63 - 1


def _plausible(facts: Facts) -> None:
    """Counts come from the file's own header: one that does not fit a 64-bit integer is a lie
    (and would break every reader of the asset document), so it is dropped with a warning."""
    for field in ("tensor_count", "parameter_count", "context_length"):
        value = getattr(facts, field)
        if isinstance(value, int) and not 0 <= value <= _INT64_MAX:
            setattr(facts, field, None)
            facts.warn(f"the header's {field.replace('_', ' ')} is implausibly large: ignored")


def _outcome(fmt: str, facts: Facts) -> ScanOutcome:
    _plausible(facts)
    findings = sorted(facts.findings, key=lambda f: _SEVERITY_ORDER[f[0]])
    artifact: dict[str, Any] = {
        "format": fmt,
        "dtypes": sorted(facts.dtypes),
        "tensor_count": facts.tensor_count,
        "parameter_count": facts.parameter_count,
        "architecture": facts.architecture,
        "context_length": facts.context_length,
        "findings": [{"severity": s, "message": m} for s, m in findings],
    }
    critical = [m for s, m in findings if s == "critical"]
    if critical:
        return ScanOutcome(artifact, True, _refusal(critical))
    return ScanOutcome(artifact, False, _summary(fmt, facts, findings))


def _refusal(messages: list[str]) -> str:
    first = messages[0]
    more = f" (and {len(messages) - 1} more problems)" if len(messages) > 1 else ""
    return f"{first}{more}: refused; {_REEXPORT}"


_FORMAT_NAMES = {
    "safetensors": "safetensors file",
    "gguf": "GGUF file",
    "pickle": "pickle",
    "pytorch_zip": "PyTorch checkpoint",
    "onnx": "ONNX model",
    "unknown": "file of unknown format",
}


def _summary(fmt: str, facts: Facts, findings: list[tuple[str, str]]) -> str:
    parts = [_FORMAT_NAMES[fmt]]
    if facts.architecture:
        parts.append(f"({facts.architecture}")
        parts[-1] += f", context {facts.context_length})" if facts.context_length else ")"
    if facts.tensor_count is not None:
        parts.append(f"with {facts.tensor_count:,} tensors")
    if facts.parameter_count is not None:
        parts.append(f"and {facts.parameter_count:,} parameters")
    if facts.dtypes:
        parts.append(f"[{', '.join(sorted(facts.dtypes))}]")
    text = " ".join(parts)
    warnings = [m for s, m in findings if s == "warning"]
    if fmt == "unknown":
        return f"{text}: nothing was checked"
    if warnings:
        more = f" (and {len(warnings) - 1} more warnings)" if len(warnings) > 1 else ""
        return f"{text}: passed with a warning: {warnings[0]}{more}"
    if fmt in ("pickle", "pytorch_zip"):
        return f"{text}: passed, it imports only known tensor types"
    return f"{text}: passed"
