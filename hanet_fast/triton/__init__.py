"""Triton backend (DESIGN §2). Its kernels are tracked in their own issue; until they
land, :func:`unavailable_reason` says so and asking for ``backend="triton"`` raises."""

from __future__ import annotations


def unavailable_reason() -> str | None:
    """None when the Triton backend can run, else why it cannot."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton not installed"
    return "the triton kernels are not implemented yet"
