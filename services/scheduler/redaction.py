"""What the public API shows of what a client sent: env values are write-only.

A task's or sandbox's `env` often carries credentials (API keys for the agent's tools). They
are kept (the scheduler must hand them to an executor, again after a loss), but every Task and
Sandbox the public services return names the variables with empty values; only executors, over
the internal API, receive the values.
"""

from __future__ import annotations

from corral.v1 import sandbox_pb2, task_pb2


def public_task(task: task_pb2.Task) -> task_pb2.Task:
    if not any(task.spec.env.values()):
        return task
    shown = task_pb2.Task()
    shown.CopyFrom(task)
    for name in shown.spec.env:
        shown.spec.env[name] = ""
    return shown


def public_sandbox(sandbox: sandbox_pb2.Sandbox) -> sandbox_pb2.Sandbox:
    if not any(sandbox.spec.env.values()):
        return sandbox
    shown = sandbox_pb2.Sandbox()
    shown.CopyFrom(sandbox)
    for name in shown.spec.env:
        shown.spec.env[name] = ""
    return shown
