"""Which protobuf implementation is loaded, and a loud warning when it is the slow one.

protobuf ships three backends: ``upb`` (C, the default in wheels), ``cpp`` (legacy C++) and
``python`` (pure Python). The pure-Python one is roughly 30x slower at parsing and serializing,
which silently wrecks the throughput budget (every request, ack and batch goes through it). It
gets picked when no binary wheel matches the platform or when
``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python`` is set, so the node logs
:func:`slow_backend_warning` at start-up instead of leaving people to guess.
"""

from __future__ import annotations

from google.protobuf.internal import api_implementation

__all__ = ["FAST_BACKEND", "protobuf_backend", "slow_backend_warning"]

FAST_BACKEND = "upb"


def protobuf_backend() -> str:
    """The loaded implementation: ``"upb"``, ``"cpp"`` or ``"python"``."""
    return api_implementation.Type()


def slow_backend_warning() -> str | None:
    """A message to log at start-up when the backend is not upb; ``None`` when all is well."""
    backend = protobuf_backend()
    if backend == FAST_BACKEND:
        return None
    return (
        f"SLOW PROTOBUF BACKEND: google.protobuf is using the {backend!r} implementation, "
        f"not {FAST_BACKEND!r}. Expect message encoding and decoding to be ~30x slower "
        "(throughput and lag numbers will be far off). Install a protobuf wheel with the "
        "upb extension for this platform and unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION."
    )
