"""Real model files for the governance tests, built the way their tools write them.

* a pickle whose opcodes import ``os.system`` (hand-built, so its ``GLOBAL`` names ``os`` and not
  the platform's ``posix``): loading it would run a shell command;
* a PyTorch-style zip checkpoint (``archive/data.pkl`` + ``archive/data/0`` …) whose pickle is
  what ``torch.save`` writes for ``{"weight": <2x2 float32 tensor>}``: a persistent id naming
  ``torch.FloatStorage`` and ``torch._utils._rebuild_tensor_v2``;
* a safetensors file through the ``safetensors.numpy`` API;
* a GGUF file through ``gguf.GGUFWriter``.
"""

from __future__ import annotations

import io
import pickletools
import struct
import zipfile
from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from safetensors.numpy import save as save_safetensors


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _checked(data: bytes) -> bytes:
    pickletools.dis(data, out=io.StringIO())  # raises if the opcodes do not make a valid pickle
    return data


def os_system_pickle(command: str) -> bytes:
    """Protocol 2: ``os.system(command)`` — what ``pickle.loads`` would run."""
    return _checked(
        b"\x80\x02"  # PROTO 2
        + b"cos\nsystem\n"  # GLOBAL os.system
        + _unicode(command)
        + b"\x85"  # TUPLE1
        + b"R"  # REDUCE: call it
        + b"."  # STOP
    )


def torch_state_dict_pickle() -> bytes:
    """The ``data.pkl`` of ``torch.save({"weight": torch.zeros(2, 2)})`` (protocol 2)."""
    return _checked(
        b"\x80\x02"
        + b"}"  # EMPTY_DICT
        + _unicode("weight")
        + b"ctorch._utils\n_rebuild_tensor_v2\n"
        + b"("  # MARK: the rebuild arguments
        + b"("  # MARK: the persistent id of the storage
        + _unicode("storage")
        + b"ctorch\nFloatStorage\n"
        + _unicode("0")
        + _unicode("cpu")
        + b"K\x04"  # 4 elements
        + b"t"  # TUPLE
        + b"Q"  # BINPERSID
        + b"K\x00"  # storage offset
        + b"K\x02K\x02\x86"  # size (2, 2)
        + b"K\x02K\x01\x86"  # stride (2, 1)
        + b"\x89"  # requires_grad False
        + b"ccollections\nOrderedDict\n)R"  # backward hooks: OrderedDict()
        + b"t"  # TUPLE
        + b"R"  # REDUCE
        + b"s"  # SETITEM
        + b"."
    )


def pytorch_zip_checkpoint() -> bytes:
    """A zip laid out as ``torch.save`` lays it out (stored, not deflated)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", torch_state_dict_pickle())
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", np.zeros(4, dtype=np.float32).tobytes())
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def safetensors_file() -> bytes:
    """Two tensors: F32 4x8 and F16 8 — 40 parameters."""
    return save_safetensors(
        {
            "embed.weight": np.arange(32, dtype=np.float32).reshape(4, 8),
            "head.bias": np.ones(8, dtype=np.float16),
        },
        metadata={"format": "np"},
    )


def gguf_file(workdir: Path, architecture: str = "llama", context_length: int = 4096) -> bytes:
    """A GGUF with the architecture and context length keys and one F32 tensor."""
    path = workdir / "model.gguf"
    writer = GGUFWriter(path, architecture)
    writer.add_context_length(context_length)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()
