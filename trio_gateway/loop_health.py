"""Event-loop health as metrics: how late a periodic task wakes, and how many tasks live.

A task that asks to wake at `t` and runs at `t + lag` measures `lag`: the time the loop spent
on other work (a blocking call, a CPU-heavy burst, too many tasks per round). Sampling costs
one wake-up per interval, nothing per request.
"""

from __future__ import annotations

import trio

from trio_gateway.metrics import GatewayMetrics


def count_tasks() -> int:
    """Every task under the root, walking nurseries (a scrape-time cost, not per request)."""
    count = 0
    root = trio.lowlevel.current_root_task()
    pending = [root] if root is not None else []
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


async def sample_event_loop_lag(
    metrics: GatewayMetrics,
    interval: float = 0.25,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    while True:
        due = trio.current_time() + interval
        await trio.sleep_until(due)
        metrics.event_loop_lag.observe(max(0.0, trio.current_time() - due))
