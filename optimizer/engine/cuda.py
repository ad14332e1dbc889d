"""Is there a CUDA GPU here, and which compute capability does it have?

Asked of the CUDA driver itself (``libcuda.so.1``): an installed CUDA wheel or an ONNX
Runtime that lists a CUDA provider says nothing about whether a GPU and its driver exist.
Plain ctypes, so the answer costs no import of TensorRT or a CUDA binding package.
"""

from __future__ import annotations

import ctypes
import functools
import sys

# CUdevice_attribute values from cuda.h (stable across CUDA releases).
_CC_MAJOR = 75
_CC_MINOR = 76


@functools.lru_cache(maxsize=1)
def _driver() -> ctypes.CDLL | None:
    name = "nvcuda.dll" if sys.platform.startswith("win") else "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    # cuInit fails (e.g. 100: no device, 999: unknown) on machines with a driver but no usable GPU.
    return lib if lib.cuInit(0) == 0 else None


def device_count() -> int:
    lib = _driver()
    if lib is None:
        return 0
    count = ctypes.c_int(0)
    return count.value if lib.cuDeviceGetCount(ctypes.byref(count)) == 0 else 0


def cuda_available() -> bool:
    """True when the CUDA driver loads, initialises and sees at least one device."""
    return device_count() > 0


def device_compute_capability(index: int = 0) -> str | None:
    """``"SM86"`` style name of device ``index``'s compute capability; None without a GPU."""
    lib = _driver()
    if lib is None or index >= device_count():
        return None
    device = ctypes.c_int(0)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(device), index) != 0:
        return None
    if lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device) != 0:
        return None
    if lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device) != 0:
        return None
    return f"SM{major.value}{minor.value}"


def sm_number(name: str) -> int:
    """``"SM86"`` -> 86, for ordering (``AMPERE_PLUS`` engines run on SM80 and newer)."""
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else -1
