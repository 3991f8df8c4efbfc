"""Benchmarks: speed targets live here, never in tests (DESIGN.md section 8)."""
