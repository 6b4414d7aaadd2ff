"""Overlapping input decoding with computation."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(fn: Callable[[T], R], items: Iterable[T], depth: int | Callable[[], int] = 4,
             workers: int = 1) -> Iterator[tuple[T, R | Exception]]:
    """fn over items in `workers` threads, at most `depth` (at least 2 x workers;
    a callable is asked again at each item) ahead, in order: image decoding (PIL
    releases the GIL) overlaps with upscaling or scoring.  workers=0: in the
    caller's thread, as it asks.  Exceptions are returned, not raised, so one
    bad file does not end the run."""
    if workers == 0:
        yield from ((item, outcome(fn, item)) for item in items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from in_order(lambda item: pool.submit(outcome, fn, item), items, depth, 2 * workers)


def outcome(fn: Callable, *args):
    """fn(*args), or the exception it raised, handed back to be reported (or
    raised again) where the result is used."""
    try:
        return fn(*args)
    except Exception as e:
        return e


def in_order(submit: Callable[[T], Future], items: Iterable[T], depth: int | Callable[[], int] = 4,
             least: int = 2) -> Iterator[tuple[T, R]]:
    """(item, result) of submit(item)'s future for each item, in order, with at
    most `depth` (at least `least`; a callable is asked again at each item)
    submitted ahead of the one the caller waits for."""
    ahead = depth if callable(depth) else (lambda: depth)
    pending: deque = deque()
    for item in items:
        pending.append((item, submit(item)))
        if len(pending) > max(ahead(), least):
            first, fut = pending.popleft()
            yield first, fut.result()
    while pending:
        first, fut = pending.popleft()
        yield first, fut.result()
