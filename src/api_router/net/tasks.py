"""The one place tasks are created: the loop keeps only weak references to tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    task = asyncio.create_task(coro)  # noqa: TID251 - this is the helper that keeps the reference
    _running.add(task)
    task.add_done_callback(_done)
    return task


def _done(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        loop = asyncio.get_running_loop()
        loop.call_exception_handler(
            {"message": "background task failed", "exception": task.exception(), "task": task}
        )
