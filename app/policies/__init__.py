"""Policies: CEL rules over assets, which policies govern which assets, compliance verdicts
(CONTRACT.md §6)."""
