"""File-safety scan of model blobs: format, tensor facts and code-running pickle imports."""

from app.scan.service import BlobMissingError, ScanOutcome, scan_blob

__all__ = ["BlobMissingError", "ScanOutcome", "scan_blob"]
