"""Request encoders and response decoders of the commands bmd uses (chapters 20 and 28)."""

from __future__ import annotations

from dataclasses import dataclass

from bmd.errors import BMCError
from bmd.ipmi.protocol import BootParam, BootTarget


@dataclass(frozen=True, slots=True)
class DeviceId:
    """Get Device ID (20.1)."""

    device_id: int
    device_revision: int
    firmware_version: str
    ipmi_version: str
    manufacturer_id: int
    product_id: int


@dataclass(frozen=True, slots=True)
class ChassisStatus:
    """Get Chassis Status (28.2), the parts bmd reads."""

    power_on: bool
    power_fault: bool
    power_restore_policy: int  # 0 stay off, 1 restore previous, 2 always on, 3 unknown


@dataclass(frozen=True, slots=True)
class BootFlags:
    """Boot flags, boot option parameter 5 (28.13)."""

    target: BootTarget | int  # an int when the BMC reports a selector this module has no name for
    persistent: bool
    valid: bool
    efi: bool


def decode_device_id(data: bytes) -> DeviceId:
    if len(data) < 6:
        raise BMCError(f"Get Device ID answer too short ({len(data)} bytes)")
    manufacturer = int.from_bytes(data[6:9], "little") & 0xFFFFF if len(data) >= 9 else 0
    product = int.from_bytes(data[9:11], "little") if len(data) >= 11 else 0
    ipmi = data[4]
    return DeviceId(
        device_id=data[0],
        device_revision=data[1] & 0x0F,
        firmware_version=f"{data[2] & 0x7F}.{data[3]:02x}",
        ipmi_version=f"{ipmi & 0x0F}.{ipmi >> 4}",
        manufacturer_id=manufacturer,
        product_id=product,
    )


def decode_chassis_status(data: bytes) -> ChassisStatus:
    if len(data) < 3:
        raise BMCError(f"Get Chassis Status answer too short ({len(data)} bytes)")
    return ChassisStatus(
        power_on=bool(data[0] & 0x01),
        power_fault=bool(data[0] & 0x08),
        power_restore_policy=(data[0] >> 5) & 0x03,
    )


def encode_boot_flags(target: BootTarget, persistent: bool, efi: bool) -> bytes:
    """Set System Boot Options parameter 5 request data; NONE clears the override (valid bit 0)."""
    if target == BootTarget.NONE:
        return bytes((BootParam.BOOT_FLAGS, 0, 0, 0, 0, 0))
    data1 = 0x80 | (0x40 if persistent else 0) | (0x20 if efi else 0)
    return bytes((BootParam.BOOT_FLAGS, data1, (target & 0x0F) << 2, 0, 0, 0))


def decode_boot_flags(data: bytes) -> BootFlags:
    """Get System Boot Options answer: version, parameter valid/selector, then the 5 data bytes."""
    if len(data) < 4 or data[1] & 0x7F != BootParam.BOOT_FLAGS:
        raise BMCError(f"Get System Boot Options answered {data.hex()}, not boot flags")
    data1, data2 = data[2], data[3]
    selector = (data2 >> 2) & 0x0F
    target: BootTarget | int
    try:
        target = BootTarget(selector)
    except ValueError:
        target = selector
    return BootFlags(target=target, persistent=bool(data1 & 0x40), valid=bool(data1 & 0x80), efi=bool(data1 & 0x20))
