"""ddq_format: reference implementation of the .ddq delta container (numpy + msgpack only).

torch, triton and vllm are optional and imported lazily by the subpackages that need them.
"""
from .errors import (BindingError, ChecksumError, DDQError, EncodingError, FormatError, LimitError, UsageError,
                     VersionError)
from .reader import DDQFile, open_ddq
from .repack import repack
from .spec import COMPACT_MAJOR, COMPACT_MINOR, FORMAT_MAJOR, FORMAT_MINOR
from .writer import Writer

__version__ = "0.1.0"
__all__ = ["DDQFile", "open_ddq", "Writer", "DDQError", "FormatError", "VersionError", "ChecksumError",
           "EncodingError", "LimitError", "BindingError", "UsageError", "FORMAT_MAJOR", "FORMAT_MINOR",
           "COMPACT_MAJOR", "COMPACT_MINOR", "repack"]
