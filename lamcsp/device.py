"""Choosing the torch device: CUDA when present, else the CPU, overridable."""

from __future__ import annotations

import torch

from lamcsp.errors import SetupError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a device into a device.

    ``"auto"`` (or ``None``) picks ``cuda`` when a GPU is visible and the CPU otherwise.

    Raises:
        SetupError: a CUDA device was asked for and none is available, or the name is unknown.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SetupError(
            "device", f"unknown device {device!r}; use auto, cpu, cuda or cuda:N"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SetupError(
            "device",
            f"device {device!r} was asked for but torch sees no CUDA GPU on this machine; "
            "use --device cpu or auto",
        )
    if dev.type not in ("cpu", "cuda"):
        raise SetupError("device", f"unsupported device type {dev.type!r}; use cpu or cuda")
    return dev
