"""Errors only the executor raises (shared ones, e.g. InvalidTask and SandboxNotFound, are in
corral.errors). corral.grpc_server's interceptor turns each into its status code."""

from __future__ import annotations

from corral.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted


class AtCapacity(ResourceExhausted):
    """Every slot of this executor is busy."""


class AlreadyRunning(AlreadyExists):
    """A task with this id is already running here."""


class StaleAssignment(FailedPrecondition):
    """A RunTask or AttachTask under an epoch older than (or not) the task's assignment here:
    a scheduler acting on an assignment since replaced (the fencing token of the assignment)."""


class DeposedScheduler(FailedPrecondition):
    """A RunTask, AttachTask or CancelTask from a scheduler replica whose leadership epoch is
    lower than the one this executor registered with: a deposed leader, woken late."""


class TaskNotHeld(NotFound):
    """AttachTask of a task this executor neither runs nor holds the events of."""


class TaskIdUsed(AlreadyExists):
    """A task with this id has run here before: ids are never reused (its directory and
    whatever it left there belong to that task)."""


class SandboxExists(AlreadyExists):
    """A long-lived sandbox with this id is already here (or being created)."""


class SandboxStartFailed(FailedPrecondition):
    """The driver could not create the sandbox, or start its desktop or Jupyter Lab."""


class TaskDirRefused(FailedPrecondition):
    """The task's directory was replaced by something the executor will not write through
    (a link planted in a long-lived sandbox's /tasks)."""
