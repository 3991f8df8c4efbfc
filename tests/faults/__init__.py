"""Fault-injection helpers for real node processes: load, checkers, netns, a hostile primary.

Shared by ``tests/test_faults*.py``, ``tests/test_hostile*.py``, ``tests/test_fuzz*.py`` and
``bench/soak.py``; nothing here mocks our own system.
"""
