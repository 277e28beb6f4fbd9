"""The executor's gRPC methods of a long-lived sandbox's interactive calls (sandbox_calls.py
does the work), mixed into ExecutorServicer; each wraps the corral.v1 message it relays."""

from __future__ import annotations

from collections.abc import AsyncIterator

from corral.errors import InvalidArgument
from corral.grpc_server import Context
from corral.internal.v1 import executor_pb2 as pb
from corral.v1 import sandbox_calls_pb2 as calls_pb2
from services.executor.sandbox_calls import SandboxCalls


class SandboxCallsServicer:
    calls: SandboxCalls

    async def RunCommand(self, request: pb.RunCommandRequest, context: Context) -> pb.RunCommandResponse:
        event = await self.calls.run_command(request.call)
        return pb.RunCommandResponse(reply=calls_pb2.RunSandboxCommandResponse(event=event))

    async def StreamCommand(self, request: pb.StreamCommandRequest, context: Context) -> AsyncIterator[pb.StreamCommandResponse]:
        async for event in self.calls.stream_command(request.call):
            yield pb.StreamCommandResponse(reply=calls_pb2.StreamSandboxCommandResponse(event=event))

    async def GetCommand(self, request: pb.GetCommandRequest, context: Context) -> pb.GetCommandResponse:
        status = self.calls.command_status(request.call)
        return pb.GetCommandResponse(reply=calls_pb2.GetSandboxCommandResponse(status=status))

    async def WatchCommand(self, request: pb.WatchCommandRequest, context: Context) -> AsyncIterator[pb.WatchCommandResponse]:
        async for event in self.calls.watch_command(request.call):
            yield pb.WatchCommandResponse(reply=calls_pb2.WatchSandboxCommandResponse(event=event))

    async def WriteCommandStdin(self, request: pb.WriteCommandStdinRequest, context: Context) -> pb.WriteCommandStdinResponse:
        await self.calls.write_stdin(request.call)
        return pb.WriteCommandStdinResponse(reply=calls_pb2.WriteSandboxCommandStdinResponse())

    async def SignalCommand(self, request: pb.SignalCommandRequest, context: Context) -> pb.SignalCommandResponse:
        await self.calls.signal_command(request.call)
        return pb.SignalCommandResponse(reply=calls_pb2.SignalSandboxCommandResponse())

    async def ReadFile(self, request: pb.ReadFileRequest, context: Context) -> AsyncIterator[pb.ReadFileResponse]:
        async for chunk in self.calls.read_file(request.call):
            yield pb.ReadFileResponse(reply=chunk)

    async def WriteFile(self, requests: AsyncIterator[pb.WriteFileRequest], context: Context) -> pb.WriteFileResponse:
        parts = aiter(requests)
        first = await anext(parts, None)
        if first is None or first.call.WhichOneof("part") != "target":
            raise InvalidArgument("a file write starts with its target (sandbox_id and path)")

        async def chunks() -> AsyncIterator[bytes]:
            async for part in parts:
                if part.call.WhichOneof("part") != "data":
                    raise InvalidArgument("a file write has one target, then data")
                yield part.call.data

        info = await self.calls.write_file(first.call.target, chunks())
        return pb.WriteFileResponse(reply=calls_pb2.WriteSandboxFileResponse(file=info))

    async def OperateFile(self, request: pb.OperateFileRequest, context: Context) -> pb.OperateFileResponse:
        return pb.OperateFileResponse(reply=await self.calls.operate_file(request.call))

    async def RunDesktopAction(self, request: pb.RunDesktopActionRequest, context: Context) -> pb.RunDesktopActionResponse:
        return pb.RunDesktopActionResponse(reply=await self.calls.desktop_action(request.call))
