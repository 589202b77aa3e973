"""A Writer that can be killed and resumed: OUT.partial (the data so far) + OUT.partial.journal.

The journal is JSON lines: first {"run": key, "base": ..., "algorithm": ..., "metadata": ...}, then one line
per entry or auxiliary file as the Writer recorded it (offsets, lengths, crc32), appended only after the
entry's bytes are flushed and fsynced. On resume the journal is replayed (a torn last line is dropped), every
recorded buffer's CRC is checked against OUT.partial, the file is truncated to the end of the last good
entry and writing continues. The final header is built from the same entries in the same order, so a
resumed run's bytes equal an uninterrupted run's. Nothing appears under OUT's own name before close().

OutputLock (OUT.lock) keeps a second run off the same output while one runs: both would write OUT.partial.
"""
from __future__ import annotations

import errno
import json
import os
import zlib
from pathlib import Path

from ..errors import UsageError
from ..spec import FORMAT_MAJOR, PREAMBLE_SIZE
from ..writer import Writer, preamble


def partial_paths(out) -> tuple[Path, Path]:
    out = Path(out)
    return out.with_name(out.name + ".partial"), out.with_name(out.name + ".partial.journal")


class OutputLock:
    """`with OutputLock(out):` one conversion at a time per output. An exclusive flock on OUT.lock, taken
    before the journal is read and released after OUT is published (or the run stops), so a published file
    is always one run's own. The kernel drops a flock when its process dies: the lock file a killed run
    leaves behind is stale by construction, and the next run simply takes it."""

    def __init__(self, out):
        self.out = Path(out)
        self.path = self.out.with_name(self.out.name + ".lock")
        self._fd: int | None = None

    def __enter__(self):
        import fcntl
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise UsageError(f"another ddq convert (pid {holder}) is writing this output; wait for it "
                                     f"or choose another -o (lock: {self.path.name})", path=self.out,
                                     field="output") from None
                raise UsageError(f"cannot lock {self.path} ({e.strerror}): write the output to a local file "
                                 f"system", path=self.out, field="output") from None
            if self._still_linked(fd):  # else a finishing run removed it between our open and flock: retry
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UsageError(f"cannot create the lock file {self.path.name} ({e.strerror})", path=self.out,
                             field="output") from None

    def _still_linked(self, fd) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)  # while held: a run that opened it meanwhile sees it gone, retries
        os.close(self._fd)
        self._fd = None


class ResumableWriter(Writer):
    """Writer(path, ...) with a fixed partial file and a journal; `done` lists the entries already written."""

    def __init__(self, path, *, run_key: str, metadata=None, base=None, algorithm=None, resume: bool = False,
                 major: int = FORMAT_MAJOR):
        self.partial, self.journal_path = partial_paths(Path(path))
        self.done: list[str] = []
        self._run_key, self._resume = run_key, resume
        super().__init__(path, metadata=metadata, base=base, algorithm=algorithm, major=major)
        self.resumed = len(self.done)  # entries found written by an earlier run

    def _open_output(self):
        """OUT.partial instead of an anonymous temp file: reopened and truncated to the journal on --resume."""
        if self._resume and self.journal_path.exists() and self.partial.exists():
            self._reopen(self._run_key)
        else:
            self._f = open(self.partial, "wb")
            self._f.write(preamble())
            self._pos = 0
            self._journal = open(self.journal_path, "w")
            self._log({"run": self._run_key, "metadata": self.header["metadata"], "base": self.header["base"],
                       "algorithm": self.header["algorithm"]})
        return self._f, self.partial

    @staticmethod
    def recorded_start(out, run_key: str) -> dict | None:
        """The first journal line of a resumable run with this key (base/algorithm records), else None."""
        partial, journal = partial_paths(out)
        if not (partial.exists() and journal.exists()):
            return None
        try:
            first = json.loads(journal.read_text().split("\n", 1)[0])
        except ValueError:
            return None
        return first if first.get("run") == run_key else None

    def _reopen(self, run_key):
        lines = self.journal_path.read_text().split("\n")
        try:
            first = json.loads(lines[0])
        except ValueError:
            raise UsageError("journal is unreadable; run without --resume", path=self.journal_path) from None
        if first.get("run") != run_key:
            raise UsageError("journal belongs to a run with other inputs or options; run without --resume",
                             path=self.journal_path, field="run")
        self.header.update({k: first[k] for k in ("metadata", "base", "algorithm")})
        records = []
        for line in lines[1:]:
            try:
                records.append(json.loads(line))
            except ValueError:
                break  # a torn last line: that entry is redone
        self._f = open(self.partial, "r+b")
        good, end = 0, 0
        for rec in records:
            bufs = [rec["file"]] if "file" in rec else list(rec["entry"].get("buffers", {}).values())
            if not all(self._crc_ok(b) for b in bufs):
                break
            good += 1
            end = max([end] + [b["offset"] + b["length"] for b in bufs])
        for rec in records[:good]:
            if "file" in rec:
                self.header["files"].append(rec["file"])
            else:
                self.header["tensors"].append(rec["entry"])
                self._names.add(rec["entry"]["name"])
                self.done.append(rec["entry"]["name"])
        self._pos = end
        self._f.truncate(PREAMBLE_SIZE + end)
        self._f.seek(PREAMBLE_SIZE + end)
        # Rewrite the journal with the good records only, so a second crash replays cleanly.
        tmp = self.journal_path.with_name(self.journal_path.name + ".tmp")
        with open(tmp, "w") as j:
            j.write("\n".join([lines[0]] + [json.dumps(r) for r in records[:good]]) + "\n")
        os.replace(tmp, self.journal_path)
        self._journal = open(self.journal_path, "a")

    def _crc_ok(self, b) -> bool:
        self._f.seek(PREAMBLE_SIZE + b["offset"])
        data = self._f.read(b["length"])
        return len(data) == b["length"] and zlib.crc32(data) == b["crc32"]

    def _log(self, record: dict):
        self._journal.write(json.dumps(record) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def _sync(self):
        self._f.flush()
        os.fsync(self._f.fileno())

    def add(self, name, kind, shape, dtype, encoded=None, **kw):
        entry = super().add(name, kind, shape, dtype, encoded, **kw)
        self._sync()
        self._log({"entry": entry})
        self.done.append(name)
        return entry

    def add_file(self, name, data):
        super().add_file(name, data)
        self._sync()
        self._log({"file": self.header["files"][-1]})

    def close(self):
        if self._closed:
            return self.path
        path = super().close()  # header + footer onto OUT.partial, fsync, rename to OUT
        self._journal.close()
        self.journal_path.unlink(missing_ok=True)
        return path

    def abort(self):
        """Keep OUT.partial and the journal for --resume (a crash, Ctrl-C, a full disk)."""
        if not self._closed:
            for f in (self._f, getattr(self, "_journal", None)):
                try:
                    if f is not None:
                        f.close()  # flushes: fails again on a full disk, and closes all the same
                except OSError:
                    pass
            self._closed = True

    def discard(self):
        self.abort()
        self.partial.unlink(missing_ok=True)
        self.journal_path.unlink(missing_ok=True)
