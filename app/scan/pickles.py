"""Pickle safety: the imports a pickle makes, read from its opcodes and judged by our policy.

``picklescan`` lists the imports (``GLOBAL``, ``INST`` and ``STACK_GLOBAL``, following the memo
the way an unpickler would) by disassembling the stream with ``pickletools``; nothing is ever
unpickled. Its verdicts are not taken as they are: CONTRACT §5 sets the policy, mapped here:

* critical (the file is refused): an import in ``CODE_RUNNING`` below, an import picklescan
  itself judges dangerous (its deny list is longer than ours and kept up to date as new
  gadgets are found), an import it could not resolve (an obfuscated ``STACK_GLOBAL``), or a
  stream we could not read to its end within the bounds (what we did not read we cannot vouch
  for);
* fine: an import in ``SAFE_GLOBALS`` (the tensor rebuilders that ``torch.save`` and numpy
  write);
* warning (not refused): any other import, which runs when the file is loaded without
  ``weights_only=True`` but is not a known way to run code.

Memory stays bounded: opcode arguments over ``MAX_ARGUMENT`` bytes (tensor data stored inline)
are skipped, not read, and a stream with more than ``MAX_OPCODES`` opcodes or ``MAX_READ``
bytes of opcodes is not scanned further (and is refused).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, TypeVar

from picklescan.relaxed_zipfile import RelaxedZipFile
from picklescan.scanner import SafetyLevel, scan_pickle_bytes

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_ARGUMENT = 64 * 1024  # larger opcode arguments are data: skipped, never read
MAX_READ = 64 * 1024 * 1024  # opcode bytes read from one pickle stream
MAX_OPCODES = 2_000_000  # picklescan keeps every opcode in memory while it scans
MAX_LINE = 64 * 1024  # protocol 0 arguments end at a newline
MAX_MEMBERS = 10_000  # pickle members scanned in one zip archive


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Imports that rebuild tensors, arrays and plain containers. They construct data from their
# arguments and call nothing the pickle chooses.
_TORCH_STORAGES = {
    f"{kind}Storage"
    for kind in _words(
        "Float Half BFloat16 Double Long Int Short Char Byte Bool ComplexFloat ComplexDouble "
        "QInt8 QUInt8 QInt32 QUInt4x2 QUInt2x4 Untyped"
    )
}
_TORCH_DTYPES = _words(
    "float32 float float16 half bfloat16 float64 double int64 long int32 int int16 short int8 "
    "uint8 bool complex64 complex128 float8_e4m3fn float8_e5m2 qint8 quint8 qint32"
)
_PLAIN_BUILTINS = _words("set frozenset slice complex bytearray range")
SAFE_GLOBALS: dict[str, frozenset[str]] = {
    "collections": _words("OrderedDict"),
    "builtins": _PLAIN_BUILTINS,
    "__builtin__": _PLAIN_BUILTINS,
    "_codecs": _words("encode"),  # how protocol 2 spells a bytes literal
    "copy_reg": _words("_reconstructor"),  # its class arguments are imports checked here
    "copyreg": _words("_reconstructor"),
    "torch._utils": _words(
        "_rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter "
        "_rebuild_parameter_with_state _rebuild_qtensor _rebuild_sparse_tensor "
        "_rebuild_device_tensor_from_numpy _rebuild_meta_tensor_no_storage"
    ),
    "torch": _words("Size device per_tensor_affine per_channel_affine")
    | _TORCH_STORAGES
    | _TORCH_DTYPES,
    "numpy": _words("dtype ndarray"),
    "numpy.core.multiarray": _words("_reconstruct scalar"),
    "numpy._core.multiarray": _words("_reconstruct scalar"),
}

_ALL = frozenset({"*"})
_BUILTINS_THAT_RUN_CODE = _words(
    "eval exec execfile compile getattr setattr delattr __import__ open file input breakpoint "
    "globals locals vars help apply reload"
)
_FILE_OPENERS = _words("open open_code FileIO")
_GETTERS = _words("attrgetter itemgetter methodcaller")
# Imports that can run code, read or write files, reach the network or load another pickle.
# ``*``: every name in the module and its submodules.
CODE_RUNNING: dict[str, frozenset[str]] = {
    "builtins": _BUILTINS_THAT_RUN_CODE,
    "__builtin__": _BUILTINS_THAT_RUN_CODE,
    "io": _FILE_OPENERS,
    "_io": _FILE_OPENERS,
    "types": _words("CodeType FunctionType LambdaType MethodType ModuleType"),
    "operator": _GETTERS,
    "_operator": _GETTERS,
    "functools": _words("partial reduce"),
    "torch.storage": _words("_load_from_bytes"),  # a nested torch.load of any pickle
    **dict.fromkeys(
        _words(
            "os posix nt subprocess sys runpy socket shutil pty webbrowser importlib pickle "
            "_pickle cPickle dill cloudpickle marshal ctypes code codeop pdb bdb timeit cProfile "
            "profile pydoc multiprocessing asyncio signal platform urllib.request http ftplib "
            "smtplib telnetlib requests commands pkgutil zipimport uuid venv pip ensurepip "
            "torch.serialization torch.hub numpy.f2py numpy.testing"
        ),
        _ALL,
    ),
}


def _listed(table: dict[str, frozenset[str]], module: str, name: str) -> bool:
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        names = table.get(".".join(parts[:depth]))
        if names is None:
            continue
        if names == _ALL or (depth == len(parts) and name in names):
            return True
    return False


def judge_import(module: str, name: str, picklescan_dangerous: bool = False) -> str:
    """``critical``, ``safe`` or ``warning`` for one import (see the module docstring)."""
    if not module or not name or "unknown" in (module, name):
        return "critical"  # an unreadable or unresolved import: assume the worst
    if picklescan_dangerous or _listed(CODE_RUNNING, module, name):
        return "critical"
    names = SAFE_GLOBALS.get(module)
    if names is not None and name in names:
        return "safe"
    return "warning"


class _Skipped(bytes):
    """Stands in for an opcode argument too large to read: empty, but as long as the bytes it
    replaces, so ``pickletools`` accepts it and the disassembly goes on."""

    _length: int

    def __new__(cls, length: int) -> _Skipped:
        obj = super().__new__(cls)
        obj._length = length
        return obj

    def __len__(self) -> int:
        return self._length


class _TooLargeError(Exception):
    pass


class _BoundedPickleStream(io.RawIOBase):
    """What picklescan reads a pickle through: skips large arguments instead of reading them,
    stops at the opcode and byte bounds, and keeps the job's heartbeat going."""

    def __init__(self, fh: IO[bytes], size: int, heartbeat: Callable[[], None]) -> None:
        super().__init__()
        self._fh, self._size, self._heartbeat = fh, size, heartbeat
        self._start = fh.tell()
        self._read = 0
        self._calls = 0
        self.too_large: str | None = None
        # picklescan turns any exception into "the pickle ends here"; a store failure or a lost
        # lease must not pass for that, so it is kept and raised again once picklescan returns
        self.failure: BaseException | None = None

    def _pos(self) -> int:
        return self._fh.tell() - self._start

    def _guard(self, action: Callable[[], _T]) -> _T:
        try:
            return action()
        except Exception as exc:
            self.failure = self.failure or exc
            raise

    def _count(self, n: int) -> None:
        self._calls += 1
        self._read += n
        if self._calls % 65536 == 0:
            self._guard(self._heartbeat)
        if self._calls > MAX_OPCODES:
            self.too_large = f"has more than {MAX_OPCODES:,} opcodes"
        elif self._read > MAX_READ:
            self.too_large = f"has more than {MAX_READ // (1024 * 1024)} MiB of opcodes"
        if self.too_large:
            raise _TooLargeError(self.too_large)  # picklescan stops at any error

    def read(self, n: int | None = -1) -> bytes:
        if self.too_large:
            return b""  # past the bound the stream looks ended, so picklescan winds up
        if n is None or n < 0:
            n = self._size - self._pos()
        if n > MAX_ARGUMENT:
            remaining = self._size - self._pos()
            if n > remaining:
                return self._fh.read(0)  # short: pickletools reports the truncation
            self._guard(lambda: self._fh.seek(n, io.SEEK_CUR))
            self._guard(self._heartbeat)
            return _Skipped(n)
        data = self._guard(lambda: self._fh.read(n))
        self._count(len(data))
        return data

    def readline(self, size: int | None = -1) -> bytes:
        if self.too_large:
            return b""
        data = self._guard(lambda: self._fh.readline(MAX_LINE))
        self._count(len(data))
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            offset += self._start
        return self._guard(lambda: self._fh.seek(offset, whence)) - self._start

    def tell(self) -> int:
        return self._pos()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


@dataclasses.dataclass
class PickleReport:
    """What one pickle stream imports, judged: {(module, name): verdict}."""

    imports: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    too_large: str | None = None  # why the stream was not read to its end
    unreadable: bool = False  # picklescan could not make out its imports at all
    damaged: bool = False  # the opcodes broke off (what came before was checked)


def scan_pickle_stream(
    fh: IO[bytes], size: int, label: str, heartbeat: Callable[[], None]
) -> PickleReport:
    """Judge the imports of the pickle(s) in ``fh`` from its current position; never unpickles."""
    stream = _BoundedPickleStream(fh, size, heartbeat)
    try:
        result = scan_pickle_bytes(stream, label)
    except Exception as exc:
        if stream.failure is not None:
            raise stream.failure from exc
        if stream.too_large:
            return PickleReport(too_large=stream.too_large)
        # e.g. a STACK_GLOBAL without its two names: no import list we could vouch for
        log.info("picklescan could not list the imports of %s: %s", label, exc)
        return PickleReport(unreadable=True)
    if stream.failure is not None:
        raise stream.failure
    report = PickleReport(too_large=stream.too_large, damaged=bool(result.scan_err))
    for item in result.globals:
        module, name = str(item.module), str(item.name)
        verdict = judge_import(module, name, item.safety == SafetyLevel.Dangerous)
        report.imports[(module, name)] = verdict
    return report


# How torch's typed storages name their element types, in the spelling safetensors uses.
STORAGE_DTYPES = {
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "DoubleStorage": "F64",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64",
    "ComplexDoubleStorage": "C128",
    "QInt8Storage": "QINT8",
    "QUInt8Storage": "QUINT8",
    "QInt32Storage": "QINT32",
    "QUInt4x2Storage": "QUINT4X2",
    "QUInt2x4Storage": "QUINT2X4",
}


def storage_dtypes(report: PickleReport) -> set[str]:
    """The element types of the torch storages a checkpoint pickle names (cheap: no VM)."""
    return {
        STORAGE_DTYPES[name]
        for (module, name) in report.imports
        if module == "torch" and name in STORAGE_DTYPES
    }


# What zipfile raises for a member it cannot give back (damaged, encrypted, unknown method)
_MEMBER_ERRORS = (
    zipfile.BadZipFile,
    NotImplementedError,
    RuntimeError,
    EOFError,
    zlib.error,
    ValueError,
)


@dataclasses.dataclass
class ZipReport:
    is_torch: bool  # has data.pkl at its root or one folder down
    pickles: dict[str, PickleReport]
    unreadable: list[str]  # pickle members that could not be read, so were not checked
    torchscript: bool  # has code/ members (TorchScript, which torch.jit.load runs)
    error: str | None = None  # the archive itself could not be read


def scan_zip(fh: IO[bytes], heartbeat: Callable[[], None]) -> ZipReport:
    """Scan every ``*.pkl`` member of a zip archive (PyTorch's checkpoint format)."""
    try:
        archive = RelaxedZipFile(fh, "r")
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        return ZipReport(False, {}, [], False, error=str(exc) or exc.__class__.__name__)
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        names = [i.filename for i in infos]
        is_torch = any(
            n == "data.pkl" or (n.count("/") == 1 and n.endswith("/data.pkl")) for n in names
        )
        torchscript = any(n.startswith("code/") or "/code/" in n for n in names)
        report = ZipReport(is_torch, {}, [], torchscript)
        members = [i for i in infos if i.filename.endswith(".pkl")]
        if len(members) > MAX_MEMBERS:
            report.unreadable.append(
                f"{len(members) - MAX_MEMBERS} members past the first {MAX_MEMBERS}"
            )
            members = members[:MAX_MEMBERS]
        for info in members:
            heartbeat()
            try:
                with archive.open(info, "r") as member:
                    report.pickles[info.filename] = scan_pickle_stream(
                        member, info.file_size, info.filename, heartbeat
                    )
            except _MEMBER_ERRORS as exc:
                log.info("zip member %s unreadable: %s", info.filename, exc)
                report.unreadable.append(info.filename)
        return report


def describe_import(module: str, name: str) -> str:
    return f"{module}.{name}" if module else name
