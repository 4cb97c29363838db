"""Device presets: how much memory a model may use on each kind of machine.

``usable = ram - reserved``, where ``reserved`` is what the operating system and the other
programs a person keeps open typically hold (stated per device, not measured). Phones
reserve more because mobile systems kill a single app well before RAM is full. A custom
``--ram`` is taken as memory available to the model, with nothing reserved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from koquant.errors import RecipeError

__all__ = ["Device", "DeviceFit", "DEVICES", "device", "custom_device", "parse_size", "fit", "GiB"]

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class Device:
    name: str
    ram_bytes: int
    reserved_bytes: int
    description: str

    @property
    def usable_bytes(self) -> int:
        return self.ram_bytes - self.reserved_bytes

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "ram_bytes": self.ram_bytes,
            "reserved_bytes": self.reserved_bytes,
            "usable_bytes": self.usable_bytes,
            "description": self.description,
        }


@dataclass(frozen=True)
class DeviceFit:
    """Whether ``required_bytes`` fits a device; ``headroom_bytes`` is negative when it does not."""

    device: str
    usable_bytes: int
    required_bytes: int

    @property
    def headroom_bytes(self) -> int:
        return self.usable_bytes - self.required_bytes

    @property
    def fits(self) -> bool:
        return self.headroom_bytes >= 0

    def to_dict(self) -> dict:
        return {"device": self.device, "fits": self.fits, "headroom_bytes": self.headroom_bytes}


def _d(name: str, ram_gib: float, reserved_gib: float, description: str) -> Device:
    return Device(name, int(ram_gib * GiB), int(reserved_gib * GiB), description)


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        _d("phone-8gb", 8, 4.5, "phone with 8 GB; the OS and the app limit leave about 3.5 GB"),
        _d("phone-12gb", 12, 5.5, "phone with 12 GB; about 6.5 GB for one app"),
        _d("laptop-8gb", 8, 3, "laptop with 8 GB; OS, browser and editor keep about 3 GB"),
        _d("laptop-16gb", 16, 4, "laptop with 16 GB; OS and desktop apps keep about 4 GB"),
        _d("laptop-32gb", 32, 5, "laptop or workstation with 32 GB"),
        _d("cpu-server-64gb", 64, 4, "CPU server with 64 GB, dedicated to inference"),
        _d("cpu-server-128gb", 128, 6, "CPU server with 128 GB, dedicated to inference"),
    )
}

_UNITS = {
    "": GiB,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": MiB,
    "mb": MiB,
    "mib": MiB,
    "g": GiB,
    "gb": GiB,
    "gib": GiB,
    "t": 1024 * GiB,
    "tb": 1024 * GiB,
    "tib": 1024 * GiB,
}


def parse_size(text: str | int) -> int:
    """``"8GB"``, ``"8 GiB"``, ``"7.5g"``, ``"512MB"`` or a bare number of GiB, in bytes.

    Memory is binary, so GB and GiB both mean 2**30 bytes here. A Python ``int`` is bytes.
    """
    if isinstance(text, bool) or isinstance(text, float):
        raise RecipeError(f"not a memory size: {text!r}", hint="e.g. --ram 8GB, or an int number of bytes")
    if isinstance(text, int):
        value, unit = float(text), "b"
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise RecipeError(f"not a memory size: {text!r}", hint="e.g. --ram 8GB, --ram 512MB, --ram 16")
        value, unit = float(m.group(1)), m.group(2).lower()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise RecipeError(f"memory size must be positive, got {text!r}", hint="e.g. --ram 8GB")
    return size


def device(name: str) -> Device:
    found = DEVICES.get(str(name).lower())
    if found is None:
        raise RecipeError(
            f"unknown device {name!r}", hint="known devices: " + ", ".join(DEVICES) + "; or use --ram 8GB"
        )
    return found


def custom_device(ram: str | int) -> Device:
    size = parse_size(ram)
    label = f"{size / GiB:g}" if size >= GiB else f"{size / MiB:g}m"
    return Device(
        f"ram-{label}gb" if size >= GiB else f"ram-{label}b", size, 0, "memory given with --ram, nothing reserved"
    )


def fit(dev: Device, required_bytes: int) -> DeviceFit:
    return DeviceFit(dev.name, dev.usable_bytes, required_bytes)
