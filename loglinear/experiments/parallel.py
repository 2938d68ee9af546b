"""Run a study's work units over local worker processes, feeding rows to disk as they come."""

from __future__ import annotations

import numpy as np


def execute(func, config, items, *, jobs: int, sink, progress: bool, desc: str,
            max_chunk: int = 2) -> None:
    """Run ``func(config, chunk)`` over chunks of ``items`` (joblib for ``jobs`` > 1),
    feeding each finished chunk's rows to ``sink`` as it arrives.

    Chunks hold at most ``max_chunk`` items (about four per worker otherwise), so that
    finished rows reach disk promptly and a killed run loses little.
    """
    if not items:
        return
    from tqdm.auto import tqdm

    parts = max(1, jobs) * 4
    size = max(1, min(max_chunk, int(np.ceil(len(items) / parts))))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="item")
    try:
        if jobs == 1:
            for chunk in chunks:
                sink(func(config, chunk))
                bar.update(len(chunk))
        else:
            from joblib import Parallel, delayed

            par = Parallel(n_jobs=jobs, return_as="generator_unordered")
            for rows, chunk in par(delayed(_tagged)(func, config, c) for c in chunks):
                sink(rows)
                bar.update(len(chunk))
    finally:
        bar.close()


def _tagged(func, config, chunk):
    return func(config, chunk), chunk
