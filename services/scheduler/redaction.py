"""What the public API shows of what a client sent: env values are write-only.

A task's or sandbox's `env` often carries credentials (API keys for the agent's tools). They
are kept (the scheduler must hand them to an executor, again after a loss), but every Task and
Sandbox the public services return names the variables with empty values; only executors, over
the internal API, receive the values.
"""

from __future__ import annotations

from typing import TypeVar

from corral.v1 import sandbox_pb2, task_pb2

Shown = TypeVar("Shown", task_pb2.Task, sandbox_pb2.Sandbox)


def _without_env_values(record: Shown) -> Shown:
    """`record` itself when its env holds no values, else a copy naming the variables only."""
    if not any(record.spec.env.values()):
        return record
    shown = type(record)()
    shown.CopyFrom(record)
    for name in shown.spec.env:
        shown.spec.env[name] = ""
    return shown


def public_task(task: task_pb2.Task) -> task_pb2.Task:
    return _without_env_values(task)


def public_sandbox(sandbox: sandbox_pb2.Sandbox) -> sandbox_pb2.Sandbox:
    return _without_env_values(sandbox)
