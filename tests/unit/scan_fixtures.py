"""Real model files for the scan tests, built from their bytes: hand-assembled pickles (so each
opcode is the one the test means), a PyTorch-style zip checkpoint, safetensors written by the
safetensors library and GGUF written by the gguf library."""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from gguf import GGUFWriter
from safetensors.numpy import save as save_safetensors

from app.storage import BlobStore, LocalBlobStore, PutResult


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def call_pickle(module: str, name: str, argument: str, protocol: int = 2) -> bytes:
    """A pickle that calls ``module.name(argument)`` when loaded.

    Protocol 2 names the callable with GLOBAL; protocol 4 with STACK_GLOBAL from two strings
    that go through the memo (as ``pickle`` writes it), which a scanner must follow."""
    if protocol == 2:
        head = b"\x80\x02c" + f"{module}\n{name}\n".encode()
    else:
        head = b"\x80\x04" + _unicode(module) + b"\x94" + _unicode(name) + b"\x94\x93"
    return head + _unicode(argument) + b"\x85R."  # TUPLE1, REDUCE, STOP


class RunsCommand:
    """What an attacker pickles: loading it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (self.command,))


def torch_data_pkl(extra_global: tuple[str, str] | None = None) -> bytes:
    """``data.pkl`` as ``torch.save`` writes it for ``{"weight": FloatTensor 2x3}``: the tensor
    is rebuilt by ``torch._utils._rebuild_tensor_v2`` from the persistent storage "0"."""
    ops = (
        b"\x80\x02}q\x00"
        + _unicode("weight")
        + b"ctorch._utils\n_rebuild_tensor_v2\nq\x01"
        + b"(("  # MARK for the rebuild args, MARK for the persistent id
        + _unicode("storage")
        + b"ctorch\nFloatStorage\nq\x02"
        + _unicode("0")
        + _unicode("cpu")
        + b"K\x06tQ"  # numel 6, TUPLE, BINPERSID
        + b"K\x00K\x02K\x03\x86K\x03K\x01\x86\x89"  # offset, size (2, 3), stride (3, 1), False
        + b"ccollections\nOrderedDict\n)R"  # backward hooks: OrderedDict()
        + b"tR"  # TUPLE, REDUCE
    )
    if extra_global is not None:
        module, name = extra_global
        ops += b"c" + f"{module}\n{name}\n".encode() + _unicode("touch /tmp/x") + b"\x85R0"
    return ops + b"s."  # SETITEM, STOP


def torch_zip(data_pkl: bytes, storage_bytes: int = 24) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", b"\x00" * storage_bytes)
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def benign_pickles() -> list[bytes]:
    ordered = collections.OrderedDict([("a", 1), ("b", [1.5, "x"])])
    return [
        pickle.dumps({"layers": 2, "names": ["a", "b"]}, protocol=2),
        pickle.dumps(ordered, protocol=2),
        pickle.dumps(ordered, protocol=4),
        pickle.dumps({"set": {1, 2}, "bytes": b"\x00\x01"}, protocol=0),
    ]


def safetensors_file() -> bytes:
    return save_safetensors(
        {
            "linear.weight": np.zeros((2, 3), dtype=np.float32),
            "linear.bias": np.ones(4, dtype=np.float16),
        },
        metadata={"format": "np"},
    )


def gguf_file(directory: Path, tensors: dict[str, np.ndarray] | None = None) -> bytes:
    path = directory / "model.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_context_length(4096)
    writer.add_block_count(1)
    writer.add_token_list(["<s>", "</s>", "hello", "world"])  # an array of strings to skip
    writer.add_token_scores([0.0, 0.0, -1.0, -2.0])
    for name, array in (tensors or default_gguf_tensors()).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def default_gguf_tensors() -> dict[str, np.ndarray]:
    return {
        "token_embd.weight": np.zeros((8, 16), dtype=np.float32),  # 128 parameters
        "output_norm.weight": np.ones(16, dtype=np.float16),  # 16
    }


def onnx_like() -> bytes:
    """The start of a real ONNX ModelProto: ir_version 8, producer "pytorch", then a graph."""
    producer = b"pytorch"
    graph = b"\n\x04main"  # GraphProto.node would follow
    return (
        b"\x08\x08"
        + b"\x12"
        + bytes([len(producer)])
        + producer
        + b":"
        + bytes([len(graph)])
        + graph
    )


class RangedStore(BlobStore):
    """A store that is not a LocalBlobStore (as S3 is not): keeps its bytes on disk through a
    LocalBlobStore but serves them only by ranged ``open`` calls, and counts what it served."""

    def __init__(self, root: Path) -> None:
        self.inner = LocalBlobStore(root)
        self.url = self.inner.url
        self.bytes_served = 0
        self.opens = 0

    def uri_for(self, key: str) -> str:
        return self.inner.uri_for(key)

    def key_for_uri(self, uri: str) -> str | None:
        return self.inner.key_for_uri(uri)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def put(self, stream: IO[bytes], **kwargs: Any) -> PutResult:
        return self.inner.put(stream, **kwargs)

    def size(self, key: str) -> int | None:
        return self.inner.size(key)

    def open(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        self.opens += 1
        for chunk in self.inner.open(key, start, length):
            self.bytes_served += len(chunk)
            yield chunk

    def delete(self, key: str) -> None:
        self.inner.delete(key)
