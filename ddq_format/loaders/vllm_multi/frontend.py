"""Check a request's .ddq file where the request enters vLLM, before it reaches the engine loop.

vLLM loads a request's adapter inside the engine step that first schedules it; an exception there stops
the engine. So the frontend (InputProcessor._validate_lora, run for every request by LLM and by the
OpenAI server) checks the file first: it exists, its header and every buffer's CRC-32 are sound, it was
made from this base (names, shapes, dtypes, fingerprints), and nothing in it needs a shape change or an
encoding without a kernel. A bad file then fails that request with an error naming the file and tensor
(LLM.generate raises it; the engine goes on). Results are cached per file (path, size, mtime).
"""
from __future__ import annotations

import os

from ...errors import DDQError
from ...reader import DDQFile
from . import compat
from .base import BaseCheckpoint, local_folder
from .manager import require_eager
from .payload import check_entries

_checked: dict[tuple, DDQError | None] = {}
_bases: dict[str, BaseCheckpoint] = {}


def check_file(path: str, base: BaseCheckpoint) -> None:
    with DDQFile(path) as ddq:
        base.check(ddq)
        check_entries(ddq, base)
        for name, e in ddq.entries.items():
            if e.get("buffers"):
                ddq.buffers(name)  # CRC-32 of every buffer


def check_request(model_config, lora_request) -> None:
    """Raise for a LoRARequest naming a .ddq file this engine cannot serve; others pass untouched."""
    if lora_request is None or not compat.is_ddq_path(lora_request.lora_path):
        return
    compat.require_supported()
    require_eager(model_config)
    path = os.path.abspath(os.path.expanduser(lora_request.lora_path))
    try:
        st = os.stat(path)
    except OSError:
        from vllm.exceptions import LoRAAdapterNotFoundError
        raise LoRAAdapterNotFoundError(lora_request.lora_name, lora_request.lora_path) from None
    folder = local_folder(model_config.model, getattr(model_config, "revision", None))
    key = (path, st.st_size, st.st_mtime_ns, folder)
    if key not in _checked:
        try:
            if folder not in _bases:
                _bases[folder] = BaseCheckpoint(folder)
            check_file(path, _bases[folder])
            _checked[key] = None
        except DDQError as e:
            _checked[key] = e
    if _checked[key] is not None:
        raise _checked[key]
