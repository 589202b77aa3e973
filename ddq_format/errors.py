"""One error hierarchy. Every message names the file, the tensor and the field where they are known."""
from __future__ import annotations


class DDQError(Exception):
    """Base class of every error raised by ddq_format."""

    def __init__(self, message: str, *, path=None, tensor: str | None = None, field: str | None = None):
        self.path = str(path) if path is not None else None
        self.tensor = tensor
        self.field = field
        self.reason = message
        where = []
        if self.path:
            where.append(self.path)
        if tensor:
            where.append(f"tensor {tensor!r}")
        if field:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class FormatError(DDQError):
    """The file is not a well-formed .ddq file (magic, layout, header, buffers)."""


class VersionError(FormatError):
    """The file's major version is not one this library reads."""


class ChecksumError(FormatError):
    """A buffer's or the header's CRC-32 does not match its bytes."""


class EncodingError(FormatError):
    """An entry's encoding is unknown or its parameters or buffers are inconsistent."""


class BindingError(DDQError):
    """The delta does not belong to the given base model (shape, dtype or fingerprint differ)."""


class UsageError(DDQError):
    """Arguments that cannot work (bad alpha, bits out of range, missing files...)."""


class LimitError(DDQError):
    """A well-formed input needs more memory or work than the caller allows (max_decoded_bytes)."""
