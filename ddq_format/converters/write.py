"""Stage 4 of a conversion: tensors computed by `workers` threads under a memory budget, written in order."""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ..progress import make_progress
from ..spec import KIND_COMPRESSED, KIND_DENSE, KIND_REMOVED, KIND_REPLACE, KIND_SAME, KIND_TIED
from .tensor_work import process

# Memory budget per tensor in flight, in multiples of its float32 size (measured: see bench_convert.py).
COST = {KIND_COMPRESSED: 2.5, KIND_DENSE: 2.0, KIND_REPLACE: 1.0, KIND_SAME: 1.0, KIND_REMOVED: 0.5, KIND_TIED: 0}
BUDGET_FACTOR = 3.0


def write_all(writer, tasks, base_ck, ft_ck, opts, group_size, seed, workers, progress, console, total,
               choose_seed=None, digest=False, encode_hook=None):
    largest = max((t.numel for t in tasks), default=0) * 4
    limit = max(BUDGET_FACTOR * largest, 1)
    used = 0
    pending: deque = deque()  # (task, future, cost) in write order

    def write_head():
        nonlocal used
        task, fut, cost = pending.popleft()
        r = fut.result()
        writer.add(r.name, r.kind, r.shape, r.dtype, r.encoded, base=r.base, tied_to=r.tied_to)
        used -= cost
        bar.update(job, advance=1, description=r.name)

    bar = make_progress(console, enabled=progress)
    job = bar.add_task("tensors", total=total, completed=total - len(tasks), what="tensors")
    with bar, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ddq-convert") as pool:
        for task in tasks:
            cost = COST[task.kind] * task.numel * 4
            while pending and (used + cost > limit or len(pending) >= 2 * workers):
                write_head()
            while pending and pending[0][1].done():
                write_head()
            used += cost
            fut = pool.submit(process, task, base_ck, ft_ck, opts, group_size, seed, choose_seed, digest, encode_hook)
            pending.append((task, fut, cost))
        while pending:
            write_head()
