"""The file-safety scan (CONTRACT.md §4 ``artifact``, §5 "Scan") on real files built here and
stored in a real LocalBlobStore: the format is told from the bytes, pickles are judged by
their imports without ever being loaded, and the tensor facts come from the headers alone."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from safetensors.numpy import save

from app.scan import BlobMissingError, ScanOutcome, scan_blob
from app.scan import pickles as pickle_policy
from app.scan.headers import GGML_TYPES
from app.storage import BlobStore, LocalBlobStore, digest_key
from tests.unit.scan_fixtures import (
    RangedStore,
    RunsCommand,
    benign_pickles,
    call_pickle,
    gguf_file,
    onnx_like,
    safetensors_file,
    torch_data_pkl,
    torch_zip,
)

MiB = 1024 * 1024
ARTIFACT_KEYS = {
    "format",
    "dtypes",
    "tensor_count",
    "parameter_count",
    "architecture",
    "context_length",
    "findings",
}


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def put(store: BlobStore, data: bytes) -> str:
    return digest_key(store.put(io.BytesIO(data)).hex_digest)


def scan(store: BlobStore, data: bytes, **kwargs: Any) -> ScanOutcome:
    outcome = scan_blob(store, put(store, data), **kwargs)
    assert set(outcome.artifact) == ARTIFACT_KEYS
    for finding in outcome.artifact["findings"]:
        assert set(finding) == {"severity", "message"}
        assert finding["severity"] in ("info", "warning", "critical")
    assert outcome.detail and "\n" not in outcome.detail
    return outcome


def severities(outcome: ScanOutcome, severity: str) -> list[str]:
    return [f["message"] for f in outcome.artifact["findings"] if f["severity"] == severity]


# --- pickles: code that would run is refused, and never runs ---------------------------------


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_pickle_that_runs_a_command_is_refused_without_running(
    store: LocalBlobStore, tmp_path: Path, protocol: int
) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps(RunsCommand(f"touch {marker}"), protocol=protocol)

    outcome = scan(store, data)

    assert outcome.unsafe is True
    assert outcome.artifact["format"] == "pickle"
    assert any(
        f"{os.name}.system" in m or "os.system" in m for m in severities(outcome, "critical")
    )
    assert "refused" in outcome.detail and "safetensors" in outcome.detail
    assert "system" in outcome.detail
    assert not marker.exists()  # read, never executed


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("os", "system"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("builtins", "getattr"),
        ("builtins", "__import__"),
        ("subprocess", "Popen"),
        ("sys", "exit"),
        ("runpy", "run_path"),
        ("importlib", "import_module"),
        ("pickle", "loads"),
        ("webbrowser", "open"),
        ("os.path", "join"),  # a submodule of a refused module is refused too
    ],
)
def test_code_running_imports_are_critical(
    store: LocalBlobStore, module: str, name: str, protocol: int
) -> None:
    outcome = scan(store, call_pickle(module, name, "print(1)", protocol=protocol))

    assert outcome.unsafe is True
    assert severities(outcome, "critical") == [
        f"the pickle imports {module}.{name}, which can run code when the file is loaded"
    ]
    assert outcome.detail.startswith(f"the pickle imports {module}.{name}")
    assert outcome.detail.endswith("refused; re-export the weights as safetensors")


def test_protocol_0_pickle_written_by_hand_is_recognised_and_refused(store: LocalBlobStore) -> None:
    outcome = scan(store, b"cposix\nsystem\n(S'touch /tmp/nope'\ntR.")

    assert outcome.artifact["format"] == "pickle"
    assert outcome.unsafe is True


@pytest.mark.parametrize("index", range(4))
def test_benign_pickles_pass(store: LocalBlobStore, index: int) -> None:
    outcome = scan(store, benign_pickles()[index])

    assert outcome.unsafe is False
    assert outcome.artifact["format"] == "pickle"
    assert severities(outcome, "critical") == []
    assert severities(outcome, "warning") == []
    assert outcome.artifact["tensor_count"] is None
    assert outcome.artifact["parameter_count"] is None
    assert any("not read from pickles" in m for m in severities(outcome, "info"))
    assert "passed" in outcome.detail


def test_other_imports_are_a_warning_not_a_refusal(store: LocalBlobStore) -> None:
    outcome = scan(store, call_pickle("json", "loads", "[1, 2]"))

    assert outcome.unsafe is False
    assert severities(outcome, "critical") == []
    assert len(severities(outcome, "warning")) == 1
    assert "json.loads" in severities(outcome, "warning")[0]
    assert "warning" in outcome.detail and "json.loads" in outcome.detail


def test_pickle_arguments_too_large_to_read_are_skipped_and_the_scan_goes_on(
    store: LocalBlobStore,
) -> None:
    big = b"\x00" * (2 * pickle_policy.MAX_ARGUMENT)
    inline = b"\x80\x04B" + struct.pack("<I", len(big)) + big + b"0"  # BINBYTES, POP
    evil = call_pickle("os", "system", "id", protocol=2)[2:]

    refused = scan(store, inline + evil)
    benign = scan(store, inline + b"N.")

    assert refused.unsafe is True
    assert any("os.system" in m for m in severities(refused, "critical"))
    assert benign.unsafe is False


def test_pickle_too_long_to_check_is_refused(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pickle_policy, "MAX_OPCODES", 100)
    data = b"\x80\x02]" + b"N\x85" * 200 + b"."  # many harmless opcodes

    outcome = scan(store, data)

    assert outcome.unsafe is True
    assert any("more than 100 opcodes" in m for m in severities(outcome, "critical"))


def test_judge_import_policy_table() -> None:
    assert pickle_policy.judge_import("torch._utils", "_rebuild_tensor_v2") == "safe"
    assert pickle_policy.judge_import("torch", "BFloat16Storage") == "safe"
    assert pickle_policy.judge_import("numpy.core.multiarray", "_reconstruct") == "safe"
    assert pickle_policy.judge_import("collections", "OrderedDict") == "safe"
    assert pickle_policy.judge_import("builtins", "set") == "safe"
    assert pickle_policy.judge_import("builtins", "print") == "warning"
    assert pickle_policy.judge_import("collections", "Counter") == "warning"
    assert pickle_policy.judge_import("nt", "system") == "critical"
    assert pickle_policy.judge_import("posix", "system") == "critical"
    assert pickle_policy.judge_import("torch.serialization", "load") == "critical"
    assert pickle_policy.judge_import("unknown", "unknown") == "critical"
    assert pickle_policy.judge_import("", "system") == "critical"
    # picklescan's own verdict of danger is never downgraded
    assert pickle_policy.judge_import("ssl", "get_server_certificate", True) == "critical"


# --- PyTorch zip checkpoints ---------------------------------------------------------------


def test_pytorch_zip_checkpoint_with_tensor_rebuilders_passes(store: LocalBlobStore) -> None:
    outcome = scan(store, torch_zip(torch_data_pkl()))

    assert outcome.unsafe is False
    assert outcome.artifact["format"] == "pytorch_zip"
    assert outcome.artifact["dtypes"] == ["F32"]
    assert severities(outcome, "critical") == []
    assert severities(outcome, "warning") == []
    assert outcome.detail.startswith("PyTorch checkpoint")


def test_pytorch_zip_whose_data_pkl_runs_a_command_is_refused(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    outcome = scan(store, torch_zip(torch_data_pkl(extra_global=("os", "system"))))

    assert outcome.unsafe is True
    assert outcome.artifact["format"] == "pytorch_zip"
    assert severities(outcome, "critical") == [
        "archive/data.pkl imports os.system, which can run code when the file is loaded"
    ]
    assert outcome.detail.startswith("archive/data.pkl imports os.system")


def test_every_pkl_member_of_a_zip_is_scanned(store: LocalBlobStore) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("notes.txt", "hello")
        archive.writestr("extra/state.pkl", call_pickle("builtins", "exec", "x=1"))
    outcome = scan(store, buffer.getvalue())

    assert outcome.artifact["format"] == "unknown"  # no data.pkl: not a PyTorch checkpoint
    assert outcome.unsafe is True
    assert any(
        "extra/state.pkl imports builtins.exec" in m for m in severities(outcome, "critical")
    )


def test_zip_that_cannot_be_read_is_refused(store: LocalBlobStore) -> None:
    outcome = scan(store, b"PK\x03\x04" + b"\x00" * 100)

    assert outcome.unsafe is True
    assert any("zip archive could not be read" in m for m in severities(outcome, "critical"))


# --- safetensors ----------------------------------------------------------------------------


def test_safetensors_facts_come_from_the_header(store: LocalBlobStore) -> None:
    outcome = scan(store, safetensors_file())

    assert outcome.unsafe is False
    assert outcome.artifact == {
        "format": "safetensors",
        "dtypes": ["F16", "F32"],
        "tensor_count": 2,
        "parameter_count": 10,
        "architecture": None,
        "context_length": None,
        "findings": [],
    }
    assert outcome.detail == (
        "safetensors file with 2 tensors and 10 parameters [F16, F32]: passed"
    )


def test_safetensors_with_a_damaged_header_is_a_finding_not_a_crash(store: LocalBlobStore) -> None:
    header = b'{"w": {"dtype": "F32", "shape": [2, '  # cut off mid-JSON
    data = struct.pack("<Q", len(header)) + header + b"\x00" * 32

    outcome = scan(store, data)

    assert outcome.unsafe is False
    assert outcome.artifact["format"] == "safetensors"
    assert outcome.artifact["tensor_count"] is None
    assert any("not valid JSON" in m for m in severities(outcome, "warning"))


def test_truncated_safetensors_file_is_reported(store: LocalBlobStore) -> None:
    whole = safetensors_file()
    header_cut = whole[:40]  # the header says more bytes than the file has
    data_cut = whole[:-8]  # the header is whole, the tensor data is not

    cut_in_header = scan(store, header_cut)
    cut_in_data = scan(store, data_cut)

    assert cut_in_header.artifact["format"] == "safetensors"
    assert any("truncated" in m for m in severities(cut_in_header, "warning"))
    assert cut_in_data.artifact["tensor_count"] == 2
    assert any("truncated" in m for m in severities(cut_in_data, "warning"))
    assert not cut_in_header.unsafe and not cut_in_data.unsafe


def test_safetensors_header_over_the_limit_is_not_read(store: LocalBlobStore) -> None:
    data = struct.pack("<Q", 200 * MiB) + b'{"x": 1}' + b" " * 64

    outcome = scan(store, data)

    assert outcome.artifact["format"] == "safetensors"
    assert outcome.artifact["tensor_count"] is None
    assert any("over the 100 MiB" in m for m in severities(outcome, "warning"))


# --- GGUF -----------------------------------------------------------------------------------


def test_gguf_facts_come_from_the_header(store: LocalBlobStore, tmp_path: Path) -> None:
    outcome = scan(store, gguf_file(tmp_path))

    assert outcome.unsafe is False
    assert outcome.artifact == {
        "format": "gguf",
        "dtypes": ["F16", "F32"],
        "tensor_count": 2,
        "parameter_count": 144,
        "architecture": "llama",
        "context_length": 4096,
        "findings": [],
    }
    assert outcome.detail.startswith("GGUF file (llama, context 4096) with 2 tensors")


def test_truncated_gguf_gives_partial_facts(store: LocalBlobStore, tmp_path: Path) -> None:
    whole = gguf_file(tmp_path)
    outcome = scan(store, whole[:60])

    assert outcome.artifact["format"] == "gguf"
    assert outcome.unsafe is False
    assert any("truncated" in m for m in severities(outcome, "warning"))


def test_ggml_type_names_match_the_gguf_package() -> None:
    expected = {member.value: member.name for member in gguf.GGMLQuantizationType}
    assert expected == GGML_TYPES


# --- ONNX, unknown, empty, missing ----------------------------------------------------------


def test_onnx_is_recognised_by_its_protobuf_start(store: LocalBlobStore) -> None:
    outcome = scan(store, onnx_like())

    assert outcome.artifact["format"] == "onnx"
    assert outcome.unsafe is False
    assert any("IR version 8" in m for m in severities(outcome, "info"))


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is not a model\n" * 100,
        b'{"architectures": ["LlamaForCausalLM"]}',
        bytes(range(256)) * 8,
        b"",
    ],
)
def test_unknown_formats_are_not_unsafe_and_say_nothing_was_checked(
    store: LocalBlobStore, data: bytes
) -> None:
    outcome = scan(store, data)

    assert outcome.artifact["format"] == "unknown"
    assert outcome.unsafe is False
    assert any("nothing was checked" in m for m in severities(outcome, "info"))
    assert outcome.detail.endswith("nothing was checked")


def test_format_is_told_by_bytes_not_name(store: LocalBlobStore, tmp_path: Path) -> None:
    # the same bytes give the same verdict whatever they were called: keys are digests
    evil = call_pickle("os", "system", "id")
    assert scan(store, evil).unsafe is True
    assert scan(store, safetensors_file()).artifact["format"] == "safetensors"


def test_missing_blob_raises(store: LocalBlobStore) -> None:
    with pytest.raises(BlobMissingError):
        scan_blob(store, digest_key("0" * 64))


# --- stores other than the local one, bounded reads and heartbeats -------------------------


def test_a_store_read_by_ranges_gives_the_same_outcomes(tmp_path: Path) -> None:
    local = LocalBlobStore(tmp_path / "a")
    ranged = RangedStore(tmp_path / "b")
    files = [
        torch_zip(torch_data_pkl()),
        torch_zip(torch_data_pkl(extra_global=("os", "system"))),
        pickle.dumps(RunsCommand("true"), protocol=4),
        benign_pickles()[1],
        safetensors_file(),
        gguf_file(tmp_path),
        onnx_like(),
    ]
    for data in files:
        assert scan(ranged, data) == scan(local, data)
    assert ranged.opens > 0


def test_big_files_are_never_read_whole(tmp_path: Path) -> None:
    store = RangedStore(tmp_path / "blobs")
    beats: list[int] = []
    big = {"w": np.zeros((3 * MiB,), dtype=np.float32)}  # 12 MiB of tensor data
    safetensors_key = put(store, save(big))
    zip_key = put(store, torch_zip(torch_data_pkl(), storage_bytes=12 * MiB))
    gguf_key = put(store, gguf_file(tmp_path, tensors=big))

    for key, fmt in (
        (safetensors_key, "safetensors"),
        (zip_key, "pytorch_zip"),
        (gguf_key, "gguf"),
    ):
        store.bytes_served = 0
        outcome = scan_blob(store, key, heartbeat=lambda: beats.append(1))
        size = store.size(key)
        assert size is not None and size > 12 * MiB
        assert outcome.artifact["format"] == fmt
        assert not outcome.unsafe
        assert store.bytes_served < size // 2, (fmt, store.bytes_served)
    assert beats


def test_a_heartbeat_failure_stops_the_scan(tmp_path: Path) -> None:
    """A lost lease raised from the heartbeat must not pass for a damaged pickle."""
    store = RangedStore(tmp_path / "blobs")
    key = put(store, pickle.dumps(RunsCommand("true"), protocol=2))

    class LeaseLost(Exception):
        pass

    calls: list[int] = []

    def heartbeat() -> None:
        calls.append(1)
        if len(calls) > 1:  # the first beat is the format detection's, before picklescan
            raise LeaseLost

    with pytest.raises(LeaseLost):
        scan_blob(store, key, heartbeat=heartbeat)
    assert len(calls) >= 2  # it got as far as picklescan, which must not swallow it
