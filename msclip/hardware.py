"""What the machine computes fast, and the precision msclip runs a model in.

The same precision is fast on one machine and very slow on another: on a CPU with AVX512_BF16 or
AMX, bf16 matrix products run at about twice the fp32 rate, while a CPU without them (AVX2 only)
emulates bf16 at about 0.3 GFLOP/s, hundreds of times slower than fp32 (measured figures:
``reference/CPU_PERFORMANCE.md`` in the project notes, and ``benchmarks/encode.py``). fp16 has no
fast CPU path at all. So the precision is chosen at run time from what the hardware reports:

========  =========================================================================================
request   what runs
========  =========================================================================================
auto      CUDA: bf16 where the GPU computes it natively (compute capability 8.0 or later), else
          fp16. CPU: bf16 where torch runs its AVX-512 kernels *and* the CPU flags show
          ``avx512_bf16`` or ``amx_bf16``, unless ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below
          its bf16 kernels (``AVX2``, ``AVX512_CORE_VNNI`` ...: :func:`onednn_bf16_cap`, bf16
          then emulated); fp32 otherwise, with msclip's image towers on
          the fused fp32 path (:func:`msclip.architecture.use_fused_fp32`: 6-22 % faster on a
          Zen 3 CPU, embeddings ~1e-6 from OpenCLIP's arithmetic). Never fp16 on a CPU.
fp32      fp32 weights and OpenCLIP's arithmetic (the published model's embeddings, bit for bit
          with OpenCLIP on the same machine).
bf16      bf16 weights (cast once). On a CPU without native bf16 it runs, with one warning that
          it is expected to be much slower and why.
fp16      fp16 weights, CUDA only.
int8      CPU image tower with dynamically quantised int8 linear layers (fbgemm/oneDNN), text
          tower in fp32; opt-in (see :func:`msclip.factory.create_model`).
========  =========================================================================================

``MSCLIP_PRECISION`` (``fp32``, ``bf16`` ...) replaces what ``auto`` picks, e.g. to get the same
numbers on every machine (the test suite sets it to ``fp32``); explicit requests are unaffected.

Detection runs once per process (cached) and only when asked, never at import.

The records of runs also say which libraries ran (:func:`library_versions`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from msclip.errors import MSCLIPWarning, PerformanceWarning, PrecisionError

__all__ = [
    "FP16_ON_CPU",
    "PRECISIONS",
    "PRECISION_ENV",
    "SWITCH_OFF",
    "SWITCH_VALUES",
    "CPUInfo",
    "PrecisionChoice",
    "amd_core",
    "available_memory",
    "choose_precision",
    "cores_per_process",
    "cpu_bf16_native",
    "cpu_info",
    "cuda_bf16_supported",
    "device_type",
    "env_precision_problem",
    "env_setting",
    "is_auto_device",
    "library_versions",
    "local_processes",
    "onednn_bf16_cap",
    "resolve_device",
    "training_precision",
    "usable_cores",
    "warn_emulated_bf16",
]

logger = logging.getLogger(__name__)

#: Precisions a model can be asked for.
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
#: Environment variable replacing the choice of ``auto``.
PRECISION_ENV = "MSCLIP_PRECISION"
#: Why fp16 is refused on a CPU (said by create_model, and by a model cast to fp16 there).
FP16_ON_CPU = "CPUs have no fast fp16 matrix products (about 1 GFLOP/s)"


#: The spellings of an on/off environment setting (:func:`env_setting`), and those meaning off.
SWITCH_VALUES = ("0", "1", "off", "on", "false", "true", "no", "yes")
SWITCH_OFF = ("0", "off", "false", "no")


def env_setting(name: str, default: str, allowed: Sequence[str]) -> str:
    """The value of the environment variable ``name`` (stripped, lower case), ``default`` when it
    is unset or empty. A value outside ``allowed`` is warned about once, naming the variable and
    its values, and read as ``default``: a mistyped setting (``MSCLIP_FUSED_CPU=none``) must not
    pass unnoticed for the one it was meant to be."""
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if not value:
        return default
    if value in allowed:
        return value
    _warn_setting(name, raw, tuple(allowed), default)
    return default


@functools.cache
def _warn_setting(name: str, raw: str, allowed: tuple[str, ...], default: str) -> None:
    warnings.warn(
        f"environment variable {name}={raw!r} is not one of {', '.join(allowed)}; it is read as "
        f"{default!r}",
        MSCLIPWarning,
        stacklevel=4,
    )


# torch's own dispatch level must be an AVX-512 one for its bf16 CPU kernels to be the native ones
_AVX512_CAPABILITIES = ("AVX512", "AMX")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN (torch's CPU kernels of bf16 matrix products) reads its ISA cap from these variables; the
# caps below its AVX512_CORE_BF16 kernels leave it emulating bf16 on a CPU that has them (measured
# on a Zen 5 with ONEDNN_MAX_CPU_ISA=AVX2: bf16 products 4x slower than fp32, 18x slower than
# uncapped; fp32 itself unchanged). Other values (newer ISAs, ALL, DEFAULT) keep the bf16 kernels.
_ONEDNN_ISA_ENVS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
_ONEDNN_BELOW_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                      "AVX512_CORE_VNNI", "AVX512_MIC", "AVX512_MIC_4OPS")  # fmt: skip
# Arm (``Features`` of /proc/cpuinfo, which names no model there): what tells Graviton 2 (dot
# product only) from Graviton 3 (SVE, BF16, I8MM) and 4 (SVE2). No x86 flag has these names.
_ARM_FLAGS = ("asimddp", "i8mm", "bf16", "sve", "sve2")
_FLAGS_OF_INTEREST = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16",
    "amx_int8", "amx_tile", *_ARM_FLAGS,
)  # fmt: skip


@dataclass(frozen=True)
class CPUInfo:
    """What the CPU and the torch build offer.

    Attributes:
        model: CPU model name (``/proc/cpuinfo``, else :func:`platform.processor`).
        capability: torch's CPU dispatch level (``torch.backends.cpu.get_cpu_capability()``:
            ``AVX2``, ``AVX512`` ...).
        flags: CPU feature flags of interest (``avx512_bf16``, ``avx512_vnni``, ``amx_bf16`` ...;
            on Arm ``sve``, ``bf16``, ``i8mm`` ...).
        torch_version: the torch version the facts were read with.
        vendor: ``vendor_id`` of ``/proc/cpuinfo`` (``AuthenticAMD``, ``GenuineIntel``), or "".
        family: x86 CPU family number (``cpu family``), None where not reported.
        model_number: x86 model number within the family (``model``), None where not reported.
            Virtual machines often name every AMD server CPU just "AMD EPYC": the family and
            model tell a Zen 4 from a Zen 5, whose int8 and bf16 throughput differ twofold.
    """

    model: str
    capability: str
    flags: frozenset[str]
    torch_version: str
    vendor: str = ""
    family: int | None = None
    model_number: int | None = None

    @property
    def core(self) -> str:
        """The core's generation where the family and model tell it (AMD's Zen 2 to Zen 5), or
        "" (:func:`amd_core`)."""
        if self.vendor != "AuthenticAMD" or self.family is None or self.model_number is None:
            return ""
        return amd_core(self.family, self.model_number)

    @property
    def native_bf16(self) -> bool:
        """bf16 matrix products run in hardware: torch dispatches AVX-512 kernels and the CPU has
        AVX512_BF16 or AMX-BF16."""
        return self.capability.upper().startswith(_AVX512_CAPABILITIES) and any(
            f in self.flags for f in _BF16_FLAGS
        )

    @property
    def vnni(self) -> bool:
        """int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def kind(self) -> str:
        """One line for reports: ``AMD EPYC, Zen 4 (family 25, model 17) (torch AVX512;
        avx512_bf16, avx512_vnni)``."""
        wide = ("avx5", "amx")
        shown = [f for f in _FLAGS_OF_INTEREST
                 if f in self.flags and (f.startswith(wide) or f in _ARM_FLAGS)]  # fmt: skip
        where = ""
        if self.family is not None:
            numbers = f"family {self.family}, model {self.model_number}"
            where = f", {self.core} ({numbers})" if self.core else f" ({numbers})"
        flags = ", ".join(shown) or "no AVX-512"
        return f"{self.model}{where} (torch {self.capability}; {flags})"

    def key(self) -> str:
        """Identity of the CPU kind and torch build (for caches of measured kernel choices)."""
        text = "|".join([self.model, self.vendor, str(self.family), str(self.model_number),
                         self.capability, ",".join(sorted(self.flags)), self.torch_version,
                         str(os.cpu_count())])  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for benchmark output and caches)."""
        return {
            "model": self.model,
            "capability": self.capability,
            "flags": sorted(self.flags),
            "torch": self.torch_version,
            "vendor": self.vendor,
            "family": self.family,
            "model_number": self.model_number,
            "core": self.core,
            "native_bf16": self.native_bf16,
            "vnni": self.vnni,
            "key": self.key(),
        }


def amd_core(family: int, model: int) -> str:
    """AMD's core generation of an x86 family and model number ("" where unknown).

    From AMD's processor programming references: family 17h is Zen and Zen+ (models below 30h)
    or Zen 2; family 19h is Zen 3 for models 00h-0Fh (Milan) and 20h-5Fh (client parts), Zen 4
    for 10h-1Fh (Genoa), 60h-7Fh (Raphael, Phoenix) and A0h-AFh (Bergamo, Siena); family 1Ah
    models below 80h are Zen 5 (Turin 00h-1Fh, client parts 20h-7Fh). Other models are not
    named rather than guessed.
    """
    if family == 0x17:
        return "Zen 2" if model >= 0x30 else "Zen/Zen+"
    if family == 0x19:
        if 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF:
            return "Zen 4"
        return "Zen 3" if model <= 0x0F or 0x20 <= model <= 0x5F else ""
    if family == 0x1A and model < 0x80:
        return "Zen 5"
    return ""


@dataclass
class _CPUInfoText:
    """What :func:`_proc_cpuinfo` read of the first processor."""

    model: str = ""
    flags: set[str] | None = None
    vendor: str = ""
    family: int | None = None
    model_number: int | None = None


def onednn_bf16_cap() -> str:
    """``NAME=VALUE`` of the environment variable capping oneDNN's instruction sets below its
    bf16 kernels (``ONEDNN_MAX_CPU_ISA=AVX2`` ...), or "" where none does: bf16 is then emulated
    even on a CPU whose flags show native bf16. Read at each call (oneDNN reads it when first
    used, so it must be set before the process starts)."""
    for name in _ONEDNN_ISA_ENVS:
        value = os.environ.get(name, "").strip()
        if value:  # oneDNN takes the first of the two that is set
            return f"{name}={value}" if value.upper() in _ONEDNN_BELOW_BF16 else ""
    return ""


def cpu_bf16_native() -> bool:
    """Whether bf16 matrix products run natively on this CPU in this process: the CPU and torch
    offer them (:attr:`CPUInfo.native_bf16`) and no :func:`onednn_bf16_cap` keeps oneDNN off
    them."""
    return cpu_info().native_bf16 and not onednn_bf16_cap()


def _proc_cpuinfo() -> _CPUInfoText | None:
    """The first processor's facts of ``/proc/cpuinfo`` (None where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    out = _CPUInfoText()
    numbers = {"cpu family": "family", "model": "model_number"}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and not out.model:
            out.model = value
        elif key in ("flags", "Features") and out.flags is None:
            out.flags = set(value.split())
        elif key == "vendor_id" and not out.vendor:
            out.vendor = value
        elif key in numbers and getattr(out, numbers[key]) is None and value.isdigit():
            setattr(out, numbers[key], int(value))
        elif not key and out.flags is not None:  # the first processor's block has ended
            break
    return out


def _torch_probe_flags() -> set[str]:
    """Flags from torch's own CPU probes (cpuinfo library), where /proc/cpuinfo is missing."""
    import torch

    probes = {
        "avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported",
        "avx512_vnni": "_is_vnni_supported", "avx512_bf16": "_is_avx512_bf16_supported",
        "amx_tile": "_is_amx_tile_supported",
    }  # fmt: skip
    out = set()
    for flag, name in probes.items():
        fn = getattr(torch.cpu, name, None)
        try:
            if fn is not None and fn():
                out.add(flag)
        except RuntimeError:
            continue
    if "amx_tile" in out and "avx512_bf16" in out:
        out.add("amx_bf16")
    return out


@functools.cache
def cpu_info() -> CPUInfo:
    """The CPU's facts, read once per process."""
    import torch

    found = _proc_cpuinfo() or _CPUInfoText()
    model, flags = found.model, found.flags or set()
    if not flags:
        flags = _torch_probe_flags()
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        capability = "DEFAULT"
    info = CPUInfo(
        model=model or platform.processor() or platform.machine() or "unknown CPU",
        capability=capability,
        flags=frozenset(f for f in flags if f in _FLAGS_OF_INTEREST),
        torch_version=torch.__version__,
        vendor=found.vendor,
        family=found.family,
        model_number=found.model_number,
    )
    logger.debug("CPU: %s", info.to_dict())
    return info


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask (what ``taskset``, a batch scheduler
    or a container's cpuset allow), else every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        with contextlib.suppress(OSError):
            return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def local_processes() -> int:
    """Processes of this run on this machine: ``LOCAL_WORLD_SIZE`` under ``torchrun``, else 1.
    They share the machine's cores, memory and shared memory."""
    raw = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, int(raw)) if raw.strip().isdigit() else 1


def cores_per_process(processes: int | None = None) -> int:
    """This process's share of the cores it may use (:func:`usable_cores`) among ``processes``
    on this machine (default :func:`local_processes`); at least 1."""
    n = local_processes() if processes is None else processes
    return max(1, usable_cores() // max(1, n))


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _stat_value(path: str, key: str) -> int:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key and value.strip().isdigit():
                    return int(value)
    except (OSError, UnicodeDecodeError):
        pass
    return 0


def _cgroup_room(proc: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes left under this process's control-group memory limit, or ``None`` without one.

    Usage counts the group's page cache; its inactive part is reclaimed before the limit is
    enforced, so it is not counted as used (as container runtimes count a working set).
    """
    folders = []
    try:
        with open(proc, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3 and parts[0] == "0" and parts[1] == "":  # cgroup v2
                    folders.append(root + parts[2].rstrip("/"))
                elif len(parts) == 3 and "memory" in parts[1].split(","):  # cgroup v1
                    folders.append(f"{root}/memory" + parts[2].rstrip("/"))
    except (OSError, UnicodeDecodeError):
        pass
    folders += [root, f"{root}/memory"]  # a container's own namespace shows its group as the root
    for folder in dict.fromkeys(folders):
        for limit_name, usage_name, inactive in (
            ("memory.max", "memory.current", "inactive_file"),
            ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
        ):
            limit = _read_int(f"{folder}/{limit_name}")
            usage = _read_int(f"{folder}/{usage_name}")
            if limit is None or usage is None or limit >= 1 << 60:  # v1 writes "no limit" huge
                continue
            cache = _stat_value(f"{folder}/memory.stat", inactive)
            return max(0, limit - max(0, usage - cache))
    return None


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping, or ``None`` where unknown.

    The kernel's estimate (``MemAvailable`` of ``/proc/meminfo``; elsewhere the free physical
    pages from ``sysconf``), lowered to the room left under the memory limit of this process's
    control group when one is set (a container, a batch job's allocation). Read anew on every
    call.
    """
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    if not found:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    room = _cgroup_room()
    if room is not None:
        found.append(room)
    return min(found) if found else None


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def cuda_bf16_supported(index: int | None = None) -> bool:
    """Whether CUDA device ``index`` computes bf16 natively (compute capability 8.0 or later).

    Each device is asked for itself (a machine may hold an A100 and a T4); ROCm devices answer as
    torch reports them (``torch.cuda.is_bf16_supported``, asked with that device current).

    Args:
        index: the device's index (``None``: the current device).
    """
    import torch

    if not torch.cuda.is_available():
        return False
    if index is None:
        index = torch.cuda.current_device()
    return _cuda_bf16_supported(int(index))


@functools.cache
def _cuda_bf16_supported(index: int) -> bool:
    import torch

    if not 0 <= index < torch.cuda.device_count():
        return False  # no such device: create_model refuses it with a DeviceError
    if torch.version.hip:  # torch answers for the current device: make it this one
        with torch.cuda.device(index):
            return bool(torch.cuda.is_bf16_supported())
    return torch.cuda.get_device_capability(index)[0] >= 8


def _device_index(device: Any) -> int | None:
    """The index of a device spec (``cuda:1`` -> 1), ``None`` where it names none."""
    import torch

    if isinstance(device, torch.device):
        return device.index
    if isinstance(device, int) and not isinstance(device, bool):
        return device  # cuda:<n>, as torch reads an int
    try:
        return torch.device(device).index if isinstance(device, str) else None
    except RuntimeError:
        return None


def is_auto_device(device: Any) -> bool:
    """Whether ``device`` is ``"auto"`` (in any case, surrounding spaces allowed)."""
    return isinstance(device, str) and device.strip().lower() == "auto"


def resolve_device(device: Any) -> Any:
    """``"auto"`` (:func:`is_auto_device`) as the device it means, as the programs' ``--device
    auto``: ``"cuda"`` where torch sees a GPU, else ``"cpu"``. Asked at call time, never at
    import; any other value is returned as it is."""
    if not is_auto_device(device):
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_type(device: Any) -> str:
    """``cpu`` or ``cuda`` (or another torch device type) of a device spec (``None`` is CPU; an
    int ``n`` is ``cuda:n``, as torch reads it)."""
    if device is None:
        return "cpu"
    if isinstance(device, int) and not isinstance(device, bool):
        return "cuda"
    return str(getattr(device, "type", None) or str(device).split(":")[0]).lower()


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a model runs in, and why.

    Attributes:
        precision: ``fp32``, ``bf16``, ``fp16`` or ``int8``.
        requested: what was asked for (``auto`` ...).
        reason: one sentence naming the hardware fact behind the choice.
        fused_fp32: fp32 through the fused CPU kernels, for speed rather than OpenCLIP's exact
            arithmetic (what ``auto`` picks on a CPU without native bf16).
    """

    precision: str
    requested: str
    reason: str
    #: float32 through the fused CPU kernels (``auto`` on a CPU without native bf16)
    fused_fp32: bool = False

    def summary(self) -> str:
        """``bf16 (auto: ...)`` for run summaries."""
        fused = "; msclip's image towers on the fused fp32 path" if self.fused_fp32 else ""
        return f"{self.precision} ({self.requested}: {self.reason}{fused})"


_warned: set[str] = set()


def _warn_once(key: str, message: str, stacklevel: int = 4) -> None:
    if key in _warned:
        return
    _warned.add(key)
    # the caller of choose_precision: _warn_once <- _choose <- choose_precision <- caller
    warnings.warn(message, PerformanceWarning, stacklevel=stacklevel)


def warn_emulated_bf16(message: str, stacklevel: int = 2) -> None:
    """Say once, in the caller's words, that bf16 will run emulated on this CPU; the general
    warning of :func:`choose_precision` is then not repeated (nor this one after it).
    ``stacklevel`` is that of :func:`warnings.warn` as seen from the caller."""
    _warn_once("cpu-bf16", message, stacklevel + 2)


def choose_precision(requested: str | None = "auto", device: Any = None) -> PrecisionChoice:
    """Resolve a precision request for a device (see the module docstring's table).

    Args:
        requested: ``auto`` (``None`` too), ``fp32``, ``bf16``, ``fp16`` or ``int8``.
        device: where the model runs (``None``: CPU).

    Raises:
        PrecisionError: an unknown precision, fp16 on a CPU, or int8 on another device than the
            CPU (also when :data:`PRECISION_ENV` asks for one: the message then names it).
    """
    req = "auto" if requested is None else str(requested).strip().lower()
    if req not in PRECISIONS:
        raise PrecisionError(
            f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)} "
            "(auto picks what this machine computes fastest)",
            param="precision",
        )
    forced = os.environ.get(PRECISION_ENV, "").strip()
    if req == "auto" and forced.lower() not in ("", "auto"):
        # the value comes from the environment, not from the request: errors and warnings say so
        fix = f"unset {PRECISION_ENV} (auto then chooses) or set it to fp32"
        try:
            if forced.lower() not in PRECISIONS:
                raise PrecisionError(f"unknown precision; choose one of {', '.join(PRECISIONS)}")
            choice = _choose(forced.lower(), device, fix)
        except PrecisionError as err:
            raise PrecisionError(
                f"environment variable {PRECISION_ENV}={forced!r} (it replaces what precision "
                f"'auto' picks) cannot be used here: {err}; {fix}"
            ) from None
        return PrecisionChoice(choice.precision, req, f"{PRECISION_ENV}={choice.precision}")
    return _choose(req, device, "use precision 'auto' (--precision auto) or 'fp32'")


def _choose(req: str, device: Any, fix: str) -> PrecisionChoice:
    """:func:`choose_precision` for a valid request ``req``; ``fix`` ends the warnings."""
    kind = device_type(device)
    if req == "int8" and kind != "cpu":
        # the quantised layers have CPU kernels only: moved to another device they fail at load
        raise PrecisionError(
            "precision 'int8' quantises CPU image towers: run it on device 'cpu' (--device "
            "cpu; 'auto' picks the GPU where there is one), or on the GPU use precision 'auto' "
            "(bf16, or fp16 where bf16 is missing) or 'fp32'"
            if kind == "cuda"
            else f"precision 'int8' quantises CPU image towers and cannot run on device type "
            f"{kind!r}; use 'auto' or 'fp32' there, or int8 on device 'cpu'",
            param="precision",
        )
    if kind == "cuda":
        native = cuda_bf16_supported(_device_index(device))
        if req == "auto":
            if native:
                return PrecisionChoice("bf16", req, "the GPU computes bf16 natively")
            return PrecisionChoice("fp16", req, "the GPU has no native bf16; fp16 instead")
        if req == "bf16" and not native and _cuda_available():  # no GPU: the device check says
            _warn_once(
                "cuda-bf16",
                "precision bf16 on a GPU without native bf16 (compute capability < 8.0) is "
                f"emulated and expected to be slow; {fix} (auto picks fp16 there)",
            )
        return PrecisionChoice(req, req, "asked for")
    if kind != "cpu":  # mps, xpu ...: what the user asks for (int8 aside), fp32 for auto
        return PrecisionChoice("fp32" if req == "auto" else req, req, f"device type {kind}")
    cpu = cpu_info()
    capped = onednn_bf16_cap() if cpu.native_bf16 else ""
    native = cpu.native_bf16 and not capped
    if req == "fp16":
        raise PrecisionError(
            f"precision 'fp16' is not supported on a CPU: {FP16_ON_CPU}; "
            + (
                "use 'auto' (bf16 on this CPU), 'bf16' or 'fp32'"
                if native
                else "use 'auto' or 'fp32' (this CPU has no native bf16 either)"
            ),
            param="precision",
        )
    if req == "auto":
        if native:
            bf = ", ".join(f for f in _BF16_FLAGS if f in cpu.flags)
            return PrecisionChoice(
                "bf16", req, f"the CPU computes bf16 natively (torch {cpu.capability}, {bf})"
            )
        if capped:
            why = f"{capped} keeps oneDNN off its bf16 kernels"
        elif not cpu.capability.upper().startswith(_AVX512_CAPABILITIES):
            why = f"torch dispatches {cpu.capability} kernels"
        else:
            why = "the CPU flags show neither avx512_bf16 nor amx_bf16"
        return PrecisionChoice("fp32", req, f"no native bf16 on this CPU ({why})", True)
    if req == "bf16" and not native:
        if capped:
            what = (
                f"precision bf16 with {capped}, which keeps oneDNN off this CPU's bf16 kernels "
                f"({cpu.kind}): bf16 matrix products are emulated, several times slower than "
                f"fp32; {fix}, or unset {capped.split('=')[0]} before Python starts"
            )
        else:
            what = (
                f"precision bf16 on a CPU without native bf16 ({cpu.kind}): bf16 matrix products "
                f"are emulated there, typically 100x or more slower than fp32; {fix}"
            )
        _warn_once("cpu-bf16", what)
        return PrecisionChoice("bf16", req, "asked for; emulated on this CPU (slow)")
    return PrecisionChoice(req, req, "asked for")


def library_versions() -> dict[str, str]:
    """Versions of Python, the platform and the libraries that shape the numbers (for the
    records of runs; read from the installed packages' metadata, none of them imported)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("msclip", "torch", "torchvision", "open_clip_torch", "numpy", "pandas",
                 "rasterio", "scikit-learn"):  # fmt: skip
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist == "msclip":
                from msclip._version import __version__

                out[dist] = __version__
    return out


def training_precision(requested: str, device: Any) -> tuple[str, str]:
    """The precision a run that trains weights computes in (``fp32``, or ``bf16`` autocast over
    float32 weights) and why: ``msclip-train``'s, and ``msclip-finetune``'s where the image tower
    trains.

    ``auto`` picks bf16 autocast on a GPU with native bf16 and fp32 elsewhere (CPU autocast loses
    the fused attention kernels and is slower than fp32 even with native bf16), unless
    :data:`msclip.hardware.PRECISION_ENV` replaces what ``auto`` picks, as it does for every
    program (``fp32``: the same numbers on every machine).

    Raises:
        PrecisionError: the environment variable holds a value training cannot use.
    """
    if requested != "auto":
        return requested, f"{requested}: asked for"
    problem = env_precision_problem(
        ("fp32", "bf16"), "training", "training computes in fp32 or bf16 (autocast)"
    )
    if problem is not None:
        raise PrecisionError(problem, param="precision")
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if value not in ("", "auto"):
        return value, f"auto: {PRECISION_ENV}={value}"
    import torch

    device = torch.device(device)
    native = device.type == "cuda" and cuda_bf16_supported(device.index)
    return ("bf16" if native else "fp32"), "auto: " + (
        "GPU with native bf16" if native else "no GPU with native bf16"
    )


def env_precision_problem(usable: Sequence[str], user: str, computes: str) -> str | None:
    """The refusal of a :data:`PRECISION_ENV` that replaces what ``auto`` picks with a value a
    program cannot use (``None`` when it is unset, ``auto`` or one of ``usable``): a name that is
    no precision, or one ``user`` does not use (int8 for training), said with what the program
    ``computes`` in and the fix."""
    forced = os.environ.get(PRECISION_ENV, "").strip()
    value = forced.lower()
    if value in ("", "auto") or value in usable:
        return None
    what = "not a precision" if value not in PRECISIONS else f"not one {user} uses"
    return (
        f"environment variable {PRECISION_ENV}={forced!r} (it replaces what precision 'auto' "
        f"picks) is {what}: {computes}; unset {PRECISION_ENV} or set it to fp32 or bf16, or pass "
        "--precision fp32 or bf16"
    )
