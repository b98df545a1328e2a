"""Which backend runs an op: the rules of DESIGN §2.

``auto`` picks, for CUDA tensors, ``cuda`` if the extension was built with CUDA, else
``triton``, else ``reference``; for CPU tensors, ``cpu`` if the extension was built,
else ``reference``. ``HANET_FAST_BACKEND`` (read once, at import) replaces ``auto``; a value
that names no backend raises ``ValueError`` at first use (an op or a module asked for ``auto``),
not at import, so that ``import hanet_fast`` and every ``--help`` still work.
A backend named explicitly that cannot run raises and says why; :func:`available_backends`
reports what can run, on this machine or on one device's tensors, with the same reasons.

``triton`` runs on CUDA tensors, and also on CPU tensors when Triton's interpreter is on
(``TRITON_INTERPRET=1`` set before triton was imported); ``auto`` never picks it for CPU
tensors.
"""

from __future__ import annotations

import os
import warnings

import torch

from hanet_fast import _extension
from hanet_fast import triton as _triton

BACKENDS = ("reference", "cpu", "cuda", "triton")
ENV_VAR = "HANET_FAST_BACKEND"


def _unavailable_reasons() -> dict[str, str | None]:
    reasons: dict[str, str | None] = {"reference": None, "cpu": _extension.LOAD_ERROR}
    if _extension.LOAD_ERROR is not None:
        reasons["cuda"] = _extension.LOAD_ERROR
    elif not _extension.built_with_cuda():
        reasons["cuda"] = "extension built without CUDA"
    else:
        reasons["cuda"] = None
    reasons["triton"] = _triton.unavailable_reason()
    return reasons


# Computed once: torch.compile traces resolve_backend, which must not call into C++.
_UNAVAILABLE = _unavailable_reasons()
_DEVICES_OF = {
    "cpu": ("cpu",),
    "cuda": ("cuda",),
    # The Triton interpreter runs the kernels on CPU tensors (slow; for tests).
    "triton": ("cuda", "cpu") if _UNAVAILABLE["triton"] is None and _triton.interpreted() else ("cuda",),
}


def _default_backend() -> tuple[str, str | None]:
    """``(HANET_FAST_BACKEND or "auto", None)``, or ``("auto", why the value is refused)``."""
    name = os.environ.get(ENV_VAR, "auto")
    if name == "auto" or name in BACKENDS:
        return name, None
    return "auto", (f"hanet_fast: environment variable {ENV_VAR}={name!r} is not one of {('auto',) + BACKENDS} "
                    f"(names are lower case); unset it to choose automatically")


DEFAULT_BACKEND, _DEFAULT_BACKEND_ERROR = _default_backend()


def check_default_backend() -> None:
    """Raise ``ValueError`` naming ``HANET_FAST_BACKEND`` when its value is not a backend name."""
    if _DEFAULT_BACKEND_ERROR is not None:
        raise ValueError(_DEFAULT_BACKEND_ERROR)


NO_CUDA_DEVICE = "no CUDA device (torch.cuda.is_available() is False)"


def _reason_on(backend: str, device_type: str) -> str | None:
    """None when ``backend`` runs ops on tensors of ``device_type`` on this machine, else why not."""
    if backend == "reference":
        return None
    if _UNAVAILABLE[backend] is not None:
        return _UNAVAILABLE[backend]
    devices = _DEVICES_OF[backend]
    if device_type not in devices:
        where = f"{devices[0]} tensors"
        if backend == "triton":
            where += " (and cpu tensors under TRITON_INTERPRET=1)"
        return f"runs on {where}, not on {device_type} tensors"
    if device_type == "cuda" and not torch.cuda.is_available():
        return NO_CUDA_DEVICE
    return None


def available_backends(device: str | torch.device | None = None) -> dict[str, str | None]:
    """Every backend name mapped to None when it can run here, or to the reason it cannot.

    Args:
        device: with a device (``"cpu"``, ``"cuda"``, ...), whether each backend runs ops on
            tensors of that device. Without one, whether each backend runs on some device
            of this machine (the CPU, and a GPU when torch sees one); a backend that runs
            nowhere here gives the reason for its own device (cuda and triton: CUDA).
    """
    if device is not None:
        device_type = torch.device(device).type
        return {name: _reason_on(name, device_type) for name in BACKENDS}
    present = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    report: dict[str, str | None] = {}
    for name in BACKENDS:
        reasons = [_reason_on(name, device_type) for device_type in present]
        report[name] = None if None in reasons else _reason_on(name, _DEVICES_OF.get(name, ("cpu",))[0])
    return report


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend that runs an op on tensors of ``device`` when ``backend`` is asked for."""
    if backend == "auto":
        check_default_backend()
        backend = DEFAULT_BACKEND
    if backend == "auto":
        return _auto_backend(device)
    if backend not in BACKENDS:
        raise ValueError(f"hanet_fast: backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    reason = _UNAVAILABLE[backend]
    if reason is not None:
        raise RuntimeError(f"hanet_fast: backend {backend!r} is not available: {reason}")
    wanted = _DEVICES_OF.get(backend)
    if wanted is not None and device.type not in wanted:
        raise ValueError(f"hanet_fast: backend {backend!r} {_reason_on(backend, device.type)}")
    return backend


_warned_fallback: set[str] = set()


def _auto_backend(device: torch.device) -> str:
    candidates = ("cuda", "triton") if device.type == "cuda" else ("cpu",) if device.type == "cpu" else ()
    for name in candidates:
        if _UNAVAILABLE[name] is None:
            return name
    if candidates and device.type not in _warned_fallback:
        _warned_fallback.add(device.type)
        reasons = "; ".join(f"{name}: {_UNAVAILABLE[name]}" for name in candidates)
        warnings.warn(f"hanet_fast: no fused backend for {device.type} tensors ({reasons}); using 'reference'")
    return "reference"
