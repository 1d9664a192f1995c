"""Test suites: running a suite's cases against an asset (CONTRACT.md §6)."""
