"""What a processor can do, and the int8 quantization defaults that are fast on it.

ONNX Runtime's int8 kernels on x86 multiply uint8 activations by int8 weights. Without VNNI
(AVX2, AVX-512 without VNNI) the instruction sequence saturates int16 intermediates, so weights
are quantized to 7 bits ("reduce range"); with VNNI (AVX512-VNNI, AVX-VNNI, AMX) it does not.
On ARM with the dot-product extension signed int8 activations run as fast and keep the
symmetric range.

Quantization follows the target, not the machine doing the compression: a target profile
names its instruction set (``isa``), and only ``isa = "host"`` reads this machine.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuCapabilities:
    """Instruction-set extensions relevant to int8 and fp16 inference."""

    arch: str
    avx2: bool = False
    avx512: bool = False
    vnni: bool = False
    amx: bool = False
    arm_dotprod: bool = False
    arm_i8mm: bool = False
    arm_fp16: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        names = [name for name, on in self.to_dict().items() if on is True]
        return f"{self.arch}: {', '.join(names) or 'no SIMD extensions of interest'}"


def cpu_capabilities(cpuinfo: str | None = None, arch: str | None = None) -> CpuCapabilities:
    """Read the capabilities from ``/proc/cpuinfo`` (or the given text, for tests)."""
    arch = arch or platform.machine().lower()
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.exists() else ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if arch in ("x86_64", "amd64", "i686", "x86"):
        return CpuCapabilities(
            arch="x86_64", avx2="avx2" in flags, avx512="avx512f" in flags,
            vnni=bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & flags),
            amx=bool({"amx_int8", "amx_tile"} & flags))
    if arch in ("aarch64", "arm64"):
        return CpuCapabilities(arch="aarch64", arm_dotprod="asimddp" in flags, arm_i8mm="i8mm" in flags,
                               arm_fp16="asimdhp" in flags)
    return CpuCapabilities(arch=arch)


@dataclass(frozen=True)
class QuantizationDefaults:
    """Activation and weight types and reduce-range that suit a processor, and why."""

    activation_type: str
    weight_type: str
    reduce_range: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def quantization_defaults(caps: CpuCapabilities | None = None) -> QuantizationDefaults:
    """The int8 settings that are fast and accurate on ``caps`` (the host when omitted)."""
    caps = caps or cpu_capabilities()
    if caps.arch == "x86_64":
        if caps.vnni or caps.amx:
            return QuantizationDefaults("uint8", "int8", False, "x86 with VNNI: U8S8 without saturation")
        if caps.avx2 or caps.avx512:
            return QuantizationDefaults("uint8", "int8", True,
                                        "x86 without VNNI: U8S8 saturates int16 sums, so weights use 7 bits")
        return QuantizationDefaults("uint8", "int8", False, "x86 without AVX2: generic kernels")
    if caps.arch == "aarch64":
        if caps.arm_dotprod or caps.arm_i8mm:
            return QuantizationDefaults("int8", "int8", False, "ARM with dot-product: symmetric S8S8")
        return QuantizationDefaults("uint8", "int8", False, "ARM without dot-product")
    return QuantizationDefaults("uint8", "int8", False, f"{caps.arch}: ONNX Runtime's default U8S8")


# What each named instruction set stands for, as the capabilities quantization_defaults reads.
_ISAS: dict[str, CpuCapabilities] = {
    "x86-vnni": CpuCapabilities(arch="x86_64", avx2=True, vnni=True),
    "x86-avx2": CpuCapabilities(arch="x86_64", avx2=True),
    "x86": CpuCapabilities(arch="x86_64"),
    "arm64-dotprod": CpuCapabilities(arch="aarch64", arm_dotprod=True),
    "arm64": CpuCapabilities(arch="aarch64"),
}
ISAS = ("host", *_ISAS)
"""The values a target profile's ``isa`` may take."""


def quantization_defaults_for(isa: str) -> QuantizationDefaults:
    """The int8 settings for a target's instruction set (``"host"``: the machine running this).

    Raises:
        ValueError: ``isa`` is not one of :data:`ISAS`.
    """
    if isa == "host":
        caps = cpu_capabilities()
        defaults = quantization_defaults(caps)
        return QuantizationDefaults(defaults.activation_type, defaults.weight_type, defaults.reduce_range,
                                    f"target isa 'host' ({caps.describe()}): {defaults.reason}")
    if isa not in _ISAS:
        raise ValueError(f"isa must be one of {', '.join(ISAS)}, got {isa!r}")
    defaults = quantization_defaults(_ISAS[isa])
    return QuantizationDefaults(defaults.activation_type, defaults.weight_type, defaults.reduce_range,
                                f"target isa '{isa}': {defaults.reason}")
