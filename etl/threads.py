"""Independent column work spread over the machine's cores.

Arrow's compute kernels (dictionary encoding, trimming, parsing) release Python's GIL while they
run, so the columns of a wide export are worked on at the same time by threads of one process,
without copying any data. Work that holds the GIL (most of pandas) gains nothing from this.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_in_threads(work: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
    """`[work(item) for item in items]`, computed by one thread per core; results in the order of
    `items`, and the first exception raised by `work` raised here."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="columns") as pool:
        return list(pool.map(work, items))
