"""Without numba the reader takes the numpy path and still decodes every golden file exactly (what a
third-party runtime with numpy + msgpack only gets). Not skipped when numba is absent."""
from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def test_reader_without_numba_takes_the_numpy_path():
    """numba unimportable (as for a runtime with numpy + msgpack only): the golden files still decode to their
    committed arrays. Runs whether or not numba is installed."""
    import subprocess
    import sys
    code = (f"import sys; sys.modules['numba'] = None; sys.path.insert(0, {str(DATA.parents[1])!r})\n"
            "import numpy as np; from pathlib import Path\n"
            "from ddq_format import DDQFile, accel\n"
            f"data = Path({str(DATA)!r})\n"
            "assert not accel.available() and accel.backend() == 'numpy'\n"
            "for p in sorted(data.glob('*.ddq')):\n"
            "    with DDQFile(p) as f:\n"
            "        for t in f.names:\n"
            "            assert f.decode(t).tobytes() == np.load(data / f'{p.stem}__{t}.npy').tobytes(), (p, t)\n"
            "print('ok', 'numba' in sys.modules and sys.modules['numba'] is not None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "False"]
