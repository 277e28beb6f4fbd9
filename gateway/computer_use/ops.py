"""The sandbox calls the computer-use tools are made of, over the scheduler's SandboxService
(the same calls the REST routes make), for one caller on one sandbox."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from corral.bounds import MAX_COMMAND_TIMEOUT_SECONDS
from corral.v1 import sandbox_calls_pb2 as calls_pb2
from gateway.auth import Metadata
from gateway.backends import upstream
from gateway.deps import SandboxStubs
from gateway.errors import ApiError
from gateway.routers.sandbox_calls import (
    COMMAND_GRACE_SECONDS,
    desktop_action,
    first_of,
    operate,
    read_stream,
    rest_of,
    write_stream,
)


@dataclass(frozen=True)
class SandboxOps:
    stubs: SandboxStubs
    caller: Metadata
    sandbox_id: str

    @property
    def owner(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Who the per-sandbox state (bash session, edit history) belongs to."""
        return self.sandbox_id, tuple(sorted((str(k), str(v)) for k, v in self.caller))

    async def desktop(self, document: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """A gui action (as POST .../desktop/actions takes it): its result and PNG, if any."""
        reply = await desktop_action(self.stubs, self.caller, self.sandbox_id, document)
        return (json.loads(reply.result) if reply.result else {}), reply.png

    def _command(self, code: str, timeout: float, background: bool = False) -> calls_pb2.SandboxCommand:
        return calls_pb2.SandboxCommand(
            tool="shell", code=code, timeout_seconds=timeout, background=background, stdin=background
        )

    async def shell(self, code: str, timeout: float = 60.0) -> calls_pb2.SandboxCommandResult:
        """Runs `sh -c code` to its end."""
        async with upstream("scheduler"):
            reply = await self.stubs.sandboxes.RunSandboxCommand(
                calls_pb2.RunSandboxCommandRequest(sandbox_id=self.sandbox_id, command=self._command(code, timeout)),
                metadata=self.caller, timeout=timeout + COMMAND_GRACE_SECONDS,
            )
        result: calls_pb2.SandboxCommandResult = reply.event.exit
        return result

    async def start(self, code: str) -> str:
        """Starts `sh -c code` in the background with its stdin open; its command id."""
        command = self._command(code, MAX_COMMAND_TIMEOUT_SECONDS, background=True)
        async with upstream("scheduler"):
            reply = await self.stubs.sandboxes.RunSandboxCommand(
                calls_pb2.RunSandboxCommandRequest(sandbox_id=self.sandbox_id, command=command),
                metadata=self.caller, timeout=self.stubs.timeout,
            )
        return str(reply.event.started)

    async def running(self, command_id: str) -> bool:
        async with upstream("scheduler"):
            reply = await self.stubs.sandboxes.GetSandboxCommand(
                calls_pb2.GetSandboxCommandRequest(sandbox_id=self.sandbox_id, command_id=command_id),
                metadata=self.caller, timeout=self.stubs.timeout,
            )
        return bool(reply.status.state == "running")

    async def stdin(self, command_id: str, data: bytes) -> None:
        async with upstream("scheduler"):
            await self.stubs.sandboxes.WriteSandboxCommandStdin(
                calls_pb2.WriteSandboxCommandStdinRequest(sandbox_id=self.sandbox_id, command_id=command_id, data=data),
                metadata=self.caller, timeout=self.stubs.timeout,
            )

    async def kill(self, command_id: str) -> None:
        async with upstream("scheduler"):
            await self.stubs.sandboxes.SignalSandboxCommand(
                calls_pb2.SignalSandboxCommandRequest(sandbox_id=self.sandbox_id, command_id=command_id, kill=True),
                metadata=self.caller, timeout=self.stubs.timeout,
            )

    async def watch(self, command_id: str) -> AsyncIterator[calls_pb2.SandboxCommandEvent]:
        """A background command's events from its start, live, until it ends."""
        call = self.stubs.sandboxes.WatchSandboxCommand(
            calls_pb2.WatchSandboxCommandRequest(sandbox_id=self.sandbox_id, command_id=command_id),
            metadata=self.caller,
        )
        try:
            first = await first_of(call)
            yield first.event
            async with upstream("scheduler"):
                async for message in rest_of(call):
                    yield message.event
        finally:
            call.cancel()

    async def read(self, path: str, limit: int) -> tuple[bytes, int]:
        """A file's first `limit` bytes at most, and its size."""
        size, chunks = await read_stream(self.stubs, self.caller, self.sandbox_id, path)
        parts: list[bytes] = []
        kept = 0
        try:
            async for chunk in chunks:
                parts.append(chunk[: limit - kept])
                kept += len(parts[-1])
                if kept >= limit:
                    break
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        return b"".join(parts), size

    async def write(self, path: str, data: bytes) -> None:
        async def one() -> AsyncIterator[bytes]:
            yield data

        await write_stream(self.stubs, self.caller, self.sandbox_id, path, one())

    async def kind(self, path: str) -> str:
        """"file", "dir"... or "" when nothing is there."""
        try:
            reply = await operate(
                self.stubs, self.caller, calls_pb2.OperateSandboxFileRequest(sandbox_id=self.sandbox_id, stat=path)
            )
        except ApiError as exc:
            if "no such file or directory" in exc.message:  # the sandbox agent's wording
                return ""
            raise
        return str(reply.file.type)

    async def remove(self, path: str) -> None:
        await operate(self.stubs, self.caller, calls_pb2.OperateSandboxFileRequest(sandbox_id=self.sandbox_id, remove=path))
