"""A small typed client over the scheduler's gRPC API, shared by the CLI, tests and benchmarks.

    async with CorralClient("127.0.0.1:50051") as client:
        task_id = await client.submit(TaskRequest.model_validate({...}))
        async for event in client.watch(task_id):
            ...

A failed call raises a `corral.errors` class (the one the server raised when this process knows
it, e.g. TaskNotFound, else the class of its status code, e.g. NotFound), never
grpc.aio.AioRpcError. `typed_errors()` does the same for code that calls stubs directly.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType

import grpc

from corral.api_keys import metadata_for
from corral.config import Settings
from corral.grpc_errors import from_rpc_error
from corral.grpc_server import channel
from corral.network_json import checked_rules
from corral.schema import TERMINAL_TASK_STATES, TaskRequest
from corral.v1 import sandbox_pb2, sandbox_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, task_pb2


@contextmanager
def typed_errors() -> Iterator[None]:
    """Re-raises a failed gRPC call inside the block as its corral.errors class."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None


class CorralClient:
    """SchedulerService (and a few SandboxService) calls with plain arguments; failures raise
    corral.errors classes."""

    def __init__(self, scheduler_address: str, settings: Settings | None = None, api_key: str | None = None) -> None:
        """Calls as the deployment's admin: its certificate from `settings` (by default
        CORRAL_TLS_* or <data_dir>/pki, which `corral up` creates). `api_key` (crl_...) is sent
        with every call as the tenant's key; None takes CORRAL_API_KEY's."""
        self.address = scheduler_address
        settings = settings or Settings()
        self._channel = channel(scheduler_address, settings, "admin")
        self._stub = scheduler_pb2_grpc.SchedulerServiceStub(self._channel)
        self._sandboxes = sandbox_pb2_grpc.SandboxServiceStub(self._channel)
        self._key = metadata_for(settings.api_key if api_key is None else api_key)

    async def __aenter__(self) -> CorralClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def submit(self, request: TaskRequest | task_pb2.TaskSpec, idempotency_key: str = "") -> str:
        """Submits a task; returns its id. With `idempotency_key`, a retry of this call (same
        key, same request) returns the first call's task instead of making another."""
        spec = request.to_proto() if isinstance(request, TaskRequest) else request
        with typed_errors():
            response = await self._stub.SubmitTask(
                scheduler_pb2.SubmitTaskRequest(spec=spec, idempotency_key=idempotency_key), metadata=self._key
            )
        return response.task_id

    async def get(self, task_id: str) -> task_pb2.Task:
        with typed_errors():
            response = await self._stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id), metadata=self._key)
        return response.task

    async def list(
        self,
        state: task_pb2.TaskState.ValueType = task_pb2.TASK_STATE_UNSPECIFIED,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[task_pb2.Task], str]:
        """One page of tasks and the token of the next page ('' when none)."""
        with typed_errors():
            response = await self._stub.ListTasks(
                scheduler_pb2.ListTasksRequest(state=state, page_size=page_size, page_token=page_token),
                metadata=self._key,
            )
        return list(response.tasks), response.next_page_token

    async def cancel(self, task_id: str) -> task_pb2.Task:
        with typed_errors():
            response = await self._stub.CancelTask(scheduler_pb2.CancelTaskRequest(task_id=task_id), metadata=self._key)
        return response.task

    async def watch(self, task_id: str, after_sequence: int = 0) -> AsyncGenerator[task_pb2.TaskEvent, None]:
        """Yields the task's events (replayed, then live) until the task finishes."""
        call = self._stub.WatchTask(
            scheduler_pb2.WatchTaskRequest(task_id=task_id, after_sequence=after_sequence), metadata=self._key
        )
        try:
            with typed_errors():
                async for response in call:
                    yield response.event
                    if response.event.WhichOneof("event") == "finished":
                        return
        finally:
            call.cancel()

    async def wait(self, task_id: str) -> task_pb2.Task:
        """Follows the task to its end and returns its final state."""
        async for _ in self.watch(task_id):
            pass
        task = await self.get(task_id)
        return task


    # --- long-lived sandboxes ----------------------------------------------------------------

    async def get_sandbox(self, sandbox_id: str) -> sandbox_pb2.Sandbox:
        """The sandbox, with its network status when it has network."""
        with typed_errors():
            response = await self._sandboxes.GetSandbox(
                sandbox_pb2.GetSandboxRequest(sandbox_id=sandbox_id), metadata=self._key
            )
        return response.sandbox

    async def update_sandbox_network(
        self, sandbox_id: str, allow: Iterable[str] = (), deny: Iterable[str] = ()
    ) -> sandbox_pb2.Sandbox:
        """Replaces the network rules of a sandbox created with network (none: the default
        policy); new connections follow them at once. InvalidArgument names a bad rule;
        FailedPrecondition: the sandbox has no network."""
        rules = checked_rules(allow, deny)
        with typed_errors():
            response = await self._sandboxes.UpdateSandboxNetwork(
                sandbox_pb2.UpdateSandboxNetworkRequest(sandbox_id=sandbox_id, rules=rules),
                metadata=self._key,
            )
        return response.sandbox


def is_terminal(task: task_pb2.Task) -> bool:
    return task.state in TERMINAL_TASK_STATES
