"""Interactive calls on a long-lived sandbox: commands, files as bytes, the desktop.

No task is made for them: the scheduler checks the caller owns the sandbox and relays each to
its executor, which asks the sandbox's agent directly (services/executor/sandbox_calls.py); the
quick unary ones go straight to the executor on the scheduler's route (gateway/call_routes.py).
They run beside a task running in the sandbox, in its workspace; every one is recorded in the
sandbox's history (GET /v1/sandboxes/{id}/history) and its /tasks/agent.log.

Streams are Server-Sent Events (`Accept: text/event-stream` or `?stream=true`): `stdout` and
`stderr` events carry output as it is produced, `exit` the end, `error` a failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import posixpath
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO, Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from starlette.requests import HTTPConnection

from corral.bounds import MAX_COMMAND_TIMEOUT_SECONDS
from corral.call_views import (
    CommandResultView,
    CommandStarted,
    CommandStatusNoOutput,
    CommandStatusView,
    DesktopActionResult,
    FileInfoView,
    FileListView,
    PathView,
    UploadView,
)
from corral.config import Settings
from corral.steps.gui import GuiStep, GuiTool
from corral.v1 import memory_pb2, sandbox_pb2
from corral.v1 import sandbox_calls_pb2 as calls_pb2
from corral.views import HistoryEventView, HistoryResponse
from gateway.auth import Metadata, forwarded
from gateway.backends import upstream
from gateway.body import JsonBody, parse_json, read_body
from gateway.deps import BackendsDep, SandboxStubs, get_sandbox_stubs, get_settings
from gateway.errors import ApiError, error_body, from_rpc_error, validation_error
from gateway.views import SSE_STREAM, UPSTREAM, binary, errors

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}", tags=["sandbox calls"])


# The app's usual dependencies, as coroutines: FastAPI runs a plain function's in its thread
# pool, a hop per dependency per call that these many small calls would pay every time.
async def _stubs(conn: HTTPConnection) -> SandboxStubs:
    return get_sandbox_stubs(conn)


async def _settings(conn: HTTPConnection) -> Settings:
    return get_settings(conn)


async def _caller(conn: HTTPConnection) -> Metadata:
    return forwarded(conn)


SandboxStubsDep = Annotated[SandboxStubs, Depends(_stubs)]
SettingsDep = Annotated[Settings, Depends(_settings)]
CallerDep = Annotated[Metadata, Depends(_caller)]

SSE_TYPE = "text/event-stream"
NOT_FOUND = "Unknown sandbox (or command)."
CALL_ERRORS = (400, 404, 409, *UPSTREAM)
# Entries a directory download walks at most.
MAX_DOWNLOAD_ENTRIES = 100_000
WRITE_CHUNK_BYTES = 1024 * 1024
# How long past its own timeout a command's call waits (the scheduler's and executor's grace).
COMMAND_GRACE_SECONDS = 60.0


def wants_stream(request: Request, stream: bool) -> bool:
    return stream or SSE_TYPE in request.headers.get("accept", "")


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def result_json(result: calls_pb2.SandboxCommandResult, output: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "exit_code": result.exit_code if result.HasField("exit_code") else None,
        "signal": result.signal if result.HasField("signal") else None,
        "timed_out": result.timed_out,
        "killed": result.killed,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "duration": round(result.duration_seconds, 6),
        "error": result.error,
    }
    if output:
        body = {"stdout": result.stdout, "stderr": result.stderr, **body}
    return body


def event_frame(event: calls_pb2.SandboxCommandEvent) -> str | None:
    kind = event.WhichOneof("event")
    if kind == "output":
        return sse(event.output.stream, {"data": event.output.data})
    if kind == "exit":
        return sse("exit", result_json(event.exit, output=False))
    if kind == "started":
        return sse("start", {"command_id": event.started} if event.started else {})
    return None


async def first_of(call: Any) -> Any:
    """The stream's first message, so that a refusal is an HTTP error, not a broken stream."""
    async with upstream("scheduler"):
        message = await call.read()
    if message is grpc.aio.EOF:  # type: ignore[attr-defined]  # exported, not in the stubs
        raise ApiError(502, "upstream_failed", "the scheduler ended the call without an answer")
    return message


async def rest_of(call: Any) -> AsyncIterator[Any]:
    """The stream's messages after first_of's (read(): a call's reads and its iterator do not mix)."""
    while (message := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
        yield message


async def relay_sse(first: Any, call: Any, keepalive: float) -> AsyncIterator[str]:
    """SSE frames of a command's event stream (`first` already read), keep-alives while idle.
    A pump reads the gRPC stream, so a keep-alive never cancels a read."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    end = object()

    async def pump() -> None:
        try:
            async for message in rest_of(call):
                await queue.put(message)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                await queue.put(exc)
        finally:
            await queue.put(end)

    pumping = asyncio.create_task(pump())
    try:
        frame = event_frame(first.event)
        if frame:
            yield frame
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=keepalive)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if item is end:
                return
            if isinstance(item, grpc.aio.AioRpcError):
                error = from_rpc_error(item, "scheduler")
                yield f"event: error\ndata: {json.dumps(error_body(error.code, error.message))}\n\n"
                return
            frame = event_frame(item.event)
            if frame:
                yield frame
    finally:
        call.cancel()  # the client went away: the command (foreground) goes too
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping


def sse_response(stream: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        stream, media_type=SSE_TYPE, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


# --- commands --------------------------------------------------------------------------------


class CommandRequest(BaseModel):
    """POST /v1/sandboxes/{id}/commands."""

    model_config = ConfigDict(extra="forbid")

    tool: Literal["shell", "python", "typescript"] = "shell"
    command: str | None = Field(None, description="The shell command (tool shell).")
    code: str | None = Field(None, description="The Python / TypeScript source (or the shell command).")
    cwd: str = Field("", description="Where it runs, relative to the workspace (default: the workspace).")
    env: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(
        None, gt=0, le=MAX_COMMAND_TIMEOUT_SECONDS, description="Seconds (default 60; background: 3600)."
    )
    background: bool = Field(False, description="Return {command_id} at once; the command runs on.")
    stdin: bool = Field(False, description="Background only: keep stdin open for .../stdin.")

    @model_validator(mode="after")
    def _one_source(self) -> CommandRequest:
        if (self.command is None) == (self.code is None):
            raise ValueError("give exactly one of command and code")
        return self

    def to_proto(self) -> calls_pb2.SandboxCommand:
        return calls_pb2.SandboxCommand(
            tool=self.tool,
            code=self.command if self.command is not None else self.code or "",
            cwd=self.cwd,
            env=self.env,
            timeout_seconds=self.timeout or 0.0,
            background=self.background,
            stdin=self.stdin,
        )


COMMAND_BODY = JsonBody(CommandRequest, example={"tool": "shell", "command": "ls -la", "timeout": 60})


class SignalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signal: str = Field("SIGTERM", description="A signal name (SIGTERM, SIGINT, SIGKILL...).")


SIGNAL_BODY = JsonBody(SignalRequest, required=False, example={"signal": "SIGINT"})


@router.post(
    "/commands",
    name="run_sandbox_command",
    summary="Run a command or code in the sandbox (result, SSE stream, or a background handle)",
    response_model=CommandResultView,
    responses={
        200: {"description": "Its result; with ?stream=true (or Accept: text/event-stream) its output as it "
              "comes: `start`, `stdout`, `stderr`, then `exit` (or `error`) events.", **SSE_STREAM},
        202: {"model": CommandStarted, "description": "background: its handle, at once."},
        **errors(*CALL_ERRORS, e404=NOT_FOUND),
    },
    openapi_extra=COMMAND_BODY.openapi,
)
async def run_command(
    sandbox_id: str,
    request: Request,
    body: Annotated[CommandRequest, Depends(COMMAND_BODY)],
    stubs: SandboxStubsDep,
    settings: SettingsDep,
    caller: CallerDep,
    stream: Annotated[bool, Query(description="Stream output as Server-Sent Events.")] = False,
) -> Response:
    if wants_stream(request, stream) and not body.background:
        call = stubs.sandboxes.StreamSandboxCommand(
            calls_pb2.StreamSandboxCommandRequest(sandbox_id=sandbox_id, command=body.to_proto()), metadata=caller
        )
        first = await first_of(call)
        return sse_response(relay_sse(first, call, settings.gateway_sse_keepalive_seconds))
    reply = await stubs.calls.unary(
        "RunSandboxCommand", sandbox_id,
        calls_pb2.RunSandboxCommandRequest(sandbox_id=sandbox_id, command=body.to_proto()), caller,
        stubs.timeout if body.background else (body.timeout or 60.0) + COMMAND_GRACE_SECONDS,
    )
    event = reply.event
    if event.WhichOneof("event") == "started":
        return JSONResponse(
            {"command_id": event.started},
            status_code=202,
            headers={"Location": f"/v1/sandboxes/{sandbox_id}/commands/{event.started}"},
        )
    return JSONResponse(result_json(event.exit))


def status_json(status: calls_pb2.SandboxCommandStatus) -> dict[str, Any]:
    return {
        "command_id": status.command_id,
        "state": status.state,
        "tool": status.tool,
        "command": status.code,
        **result_json(status.result),
    }


async def command_status(stubs: SandboxStubs, caller: Metadata, sandbox_id: str, command_id: str) -> dict[str, Any]:
    reply = await stubs.calls.unary(
        "GetSandboxCommand", sandbox_id,
        calls_pb2.GetSandboxCommandRequest(sandbox_id=sandbox_id, command_id=command_id), caller, stubs.timeout,
    )
    return status_json(reply.status)


@router.get(
    "/commands/{command_id}",
    name="get_sandbox_command",
    summary="A background command's state (and its exit once ended)",
    response_model=CommandStatusNoOutput,
    responses=errors(*CALL_ERRORS, e404=NOT_FOUND),
)
async def get_command(sandbox_id: str, command_id: str, stubs: SandboxStubsDep, caller: CallerDep) -> JSONResponse:
    status = await command_status(stubs, caller, sandbox_id, command_id)
    status.pop("stdout"), status.pop("stderr")
    return JSONResponse(status)


@router.get(
    "/commands/{command_id}/output",
    name="sandbox_command_output",
    summary="A background command's output: buffered (bounded), or as SSE from its start until it ends",
    response_model=CommandStatusView,
    responses={200: SSE_STREAM, **errors(*CALL_ERRORS, e404=NOT_FOUND)},
)
async def command_output(
    sandbox_id: str,
    command_id: str,
    request: Request,
    stubs: SandboxStubsDep,
    settings: SettingsDep,
    caller: CallerDep,
    stream: Annotated[bool, Query(description="Follow it as Server-Sent Events.")] = False,
) -> Response:
    if not wants_stream(request, stream):
        return JSONResponse(await command_status(stubs, caller, sandbox_id, command_id))
    call = stubs.sandboxes.WatchSandboxCommand(
        calls_pb2.WatchSandboxCommandRequest(sandbox_id=sandbox_id, command_id=command_id), metadata=caller
    )
    first = await first_of(call)
    return sse_response(relay_sse(first, call, settings.gateway_sse_keepalive_seconds))


@router.post(
    "/commands/{command_id}/stdin",
    name="sandbox_command_stdin",
    summary="Send bytes (the raw body) to a background command's stdin; ?close=true closes it after",
    status_code=204,
    responses=errors(*CALL_ERRORS, 413, e404=NOT_FOUND),
)
async def command_stdin(
    sandbox_id: str,
    command_id: str,
    request: Request,
    stubs: SandboxStubsDep,
    settings: SettingsDep,
    caller: CallerDep,
    close: Annotated[bool, Query(description="Close stdin after these bytes.")] = False,
) -> Response:
    data = await read_body(request, settings.max_request_bytes)
    await stubs.calls.unary(
        "WriteSandboxCommandStdin", sandbox_id,
        calls_pb2.WriteSandboxCommandStdinRequest(sandbox_id=sandbox_id, command_id=command_id, data=data, close=close),
        caller, stubs.timeout,
    )
    return Response(status_code=204)


async def _signal(stubs: SandboxStubs, caller: Metadata, sandbox_id: str, command_id: str, signal: str, kill: bool) -> None:
    await stubs.calls.unary(
        "SignalSandboxCommand", sandbox_id,
        calls_pb2.SignalSandboxCommandRequest(sandbox_id=sandbox_id, command_id=command_id, signal=signal, kill=kill),
        caller, stubs.timeout,
    )


@router.post(
    "/commands/{command_id}/signal",
    name="signal_sandbox_command",
    summary="Send a signal to a background command's process group",
    status_code=204,
    responses=errors(*CALL_ERRORS, 413, e404=NOT_FOUND),
    openapi_extra=SIGNAL_BODY.openapi,
)
async def signal_command(
    sandbox_id: str,
    command_id: str,
    body: Annotated[SignalRequest, Depends(SIGNAL_BODY)],
    stubs: SandboxStubsDep,
    caller: CallerDep,
) -> Response:
    await _signal(stubs, caller, sandbox_id, command_id, body.signal, kill=False)
    return Response(status_code=204)


@router.delete(
    "/commands/{command_id}",
    name="kill_sandbox_command",
    summary="Kill a background command's whole process tree",
    status_code=204,
    responses=errors(*CALL_ERRORS, e404=NOT_FOUND),
)
async def kill_command(sandbox_id: str, command_id: str, stubs: SandboxStubsDep, caller: CallerDep) -> Response:
    await _signal(stubs, caller, sandbox_id, command_id, "", kill=True)
    return Response(status_code=204)


# --- files -----------------------------------------------------------------------------------

PathQuery = Annotated[str, Query(min_length=1, description="Relative to the workspace, or absolute in /workspace or /tmp.")]


def info_json(info: calls_pb2.SandboxFileInfo) -> dict[str, Any]:
    return {"name": info.name, "path": info.path, "type": info.type, "size": info.size, "mtime": info.mtime}


async def operate(stubs: SandboxStubs, caller: Metadata, message: calls_pb2.OperateSandboxFileRequest) -> calls_pb2.OperateSandboxFileResponse:
    reply: calls_pb2.OperateSandboxFileResponse = await stubs.calls.unary(
        "OperateSandboxFile", message.sandbox_id, message, caller, stubs.timeout
    )
    return reply


async def read_stream(stubs: SandboxStubs, caller: Metadata, sandbox_id: str, path: str) -> tuple[int, AsyncIterator[bytes]]:
    """A file's size and its bytes, chunk by chunk as they come from the sandbox."""
    call = stubs.sandboxes.ReadSandboxFile(calls_pb2.ReadSandboxFileRequest(sandbox_id=sandbox_id, path=path), metadata=caller)
    first = await first_of(call)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield first.data
            async for message in rest_of(call):
                yield message.data
        finally:
            call.cancel()

    return first.size, chunks()


@router.get(
    "/files",
    name="read_sandbox_file",
    summary="A file's bytes (application/octet-stream)",
    response_class=Response,
    responses={200: binary("application/octet-stream"), **errors(*CALL_ERRORS, e404=NOT_FOUND)},
)
async def read_file(sandbox_id: str, path: PathQuery, stubs: SandboxStubsDep, caller: CallerDep) -> Response:
    size, chunks = await read_stream(stubs, caller, sandbox_id, path)
    return StreamingResponse(chunks, media_type="application/octet-stream", headers={"Content-Length": str(size)})


async def write_stream(
    stubs: SandboxStubs, caller: Metadata, sandbox_id: str, path: str, chunks: AsyncIterator[bytes]
) -> calls_pb2.SandboxFileInfo:
    """Streams `chunks` into the file. When reading them fails (a body over the limit: an
    ApiError), the call is cancelled, so the sandbox keeps the file as it was, and that error
    is raised."""
    failed: list[ApiError] = []
    calls: list[Any] = []

    async def parts() -> AsyncIterator[calls_pb2.WriteSandboxFileRequest]:
        yield calls_pb2.WriteSandboxFileRequest(target=calls_pb2.SandboxFileTarget(sandbox_id=sandbox_id, path=path))
        try:
            async for chunk in chunks:
                for start in range(0, len(chunk), WRITE_CHUNK_BYTES):
                    yield calls_pb2.WriteSandboxFileRequest(data=chunk[start : start + WRITE_CHUNK_BYTES])
        except ApiError as exc:
            failed.append(exc)
            calls[0].cancel()

    call = stubs.sandboxes.WriteSandboxFile(parts(), metadata=caller)
    calls.append(call)
    try:
        async with upstream("scheduler"):
            reply = await call
    except (asyncio.CancelledError, ApiError):
        if failed:
            raise failed[0] from None
        raise
    file: calls_pb2.SandboxFileInfo = reply.file
    return file


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body is larger than the sandbox file limit of {limit} bytes")


async def limited_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, refused (413) past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise too_large(limit)
        if chunk:
            yield chunk


@router.put(
    "/files",
    name="write_sandbox_file",
    summary="Write a file from the raw body (parents made)",
    response_model=FileInfoView,
    responses=errors(*CALL_ERRORS, 413, e404=NOT_FOUND),
    openapi_extra={"requestBody": {"required": True, "content": binary("application/octet-stream")["content"]}},
)
async def write_file(
    sandbox_id: str, path: PathQuery, request: Request, stubs: SandboxStubsDep, settings: SettingsDep, caller: CallerDep
) -> JSONResponse:
    info = await write_stream(stubs, caller, sandbox_id, path, limited_body(request, settings.sandbox_file_max_bytes))
    return JSONResponse(info_json(info))


@router.get(
    "/files/list", name="list_sandbox_files", summary="A directory's entries", response_model=FileListView,
    responses=errors(*CALL_ERRORS, e404=NOT_FOUND),
)
async def list_files(
    sandbox_id: str, stubs: SandboxStubsDep, caller: CallerDep, path: Annotated[str, Query()] = "."
) -> JSONResponse:
    reply = await operate(stubs, caller, calls_pb2.OperateSandboxFileRequest(sandbox_id=sandbox_id, list=path))
    return JSONResponse({"path": reply.path, "entries": [info_json(e) for e in reply.entries], "truncated": reply.truncated})


@router.get(
    "/files/stat", name="stat_sandbox_file", summary="A file's or directory's entry", response_model=FileInfoView,
    responses=errors(*CALL_ERRORS, e404=NOT_FOUND),
)
async def stat_file(sandbox_id: str, path: PathQuery, stubs: SandboxStubsDep, caller: CallerDep) -> JSONResponse:
    reply = await operate(stubs, caller, calls_pb2.OperateSandboxFileRequest(sandbox_id=sandbox_id, stat=path))
    return JSONResponse(info_json(reply.file))


class PathRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)


class RenameRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    source: str = Field(alias="from", min_length=1)
    target: str = Field(alias="to", min_length=1)


MKDIR_BODY = JsonBody(PathRequest, example={"path": "data/raw"})
RENAME_BODY = JsonBody(RenameRequest, example={"from": "draft.txt", "to": "final.txt"})


@router.post(
    "/files/mkdir", name="make_sandbox_dir", summary="Make a directory (and its parents)", response_model=PathView,
    responses=errors(*CALL_ERRORS, 413, e404=NOT_FOUND), openapi_extra=MKDIR_BODY.openapi,
)
async def make_dir(
    sandbox_id: str, body: Annotated[PathRequest, Depends(MKDIR_BODY)], stubs: SandboxStubsDep, caller: CallerDep
) -> JSONResponse:
    reply = await operate(stubs, caller, calls_pb2.OperateSandboxFileRequest(sandbox_id=sandbox_id, mkdir=body.path))
    return JSONResponse({"path": reply.path})


@router.delete(
    "/files", name="remove_sandbox_file", summary="Remove a file, a link, or a directory with its contents",
    response_model=PathView, responses=errors(*CALL_ERRORS, e404=NOT_FOUND),
)
async def remove_file(sandbox_id: str, path: PathQuery, stubs: SandboxStubsDep, caller: CallerDep) -> JSONResponse:
    reply = await operate(stubs, caller, calls_pb2.OperateSandboxFileRequest(sandbox_id=sandbox_id, remove=path))
    return JSONResponse({"path": reply.path})


@router.post(
    "/files/rename", name="rename_sandbox_file", summary="Rename (move) a file or directory", response_model=PathView,
    responses=errors(*CALL_ERRORS, 413, e404=NOT_FOUND), openapi_extra=RENAME_BODY.openapi,
)
async def rename_file(
    sandbox_id: str, body: Annotated[RenameRequest, Depends(RENAME_BODY)], stubs: SandboxStubsDep, caller: CallerDep
) -> JSONResponse:
    rename = calls_pb2.SandboxFileRename(source=body.source, target=body.target)
    reply = await operate(stubs, caller, calls_pb2.OperateSandboxFileRequest(sandbox_id=sandbox_id, rename=rename))
    return JSONResponse({"path": reply.path})


def path_problem(name: str) -> str:
    """Why an archive entry's name may not be extracted ("" when it may)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/"):
        return "is an absolute path"
    if ".." in parts:
        return "leads out of the directory ('..')"
    if "\x00" in name:
        return "contains a NUL byte"
    if not parts:
        return "has no name"
    return ""


def tar_problem(member: tarfile.TarInfo) -> str:
    """Why a tar entry may not be extracted ("" when it may)."""
    problem = path_problem(member.name)
    if problem:
        return problem
    if member.issym():
        return f"is a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"is a hard link (to {member.linkname!r})"
    if member.isdev() or member.isfifo():
        return "is a device or FIFO"
    if not (member.isfile() or member.isdir()):
        return "is not a regular file or directory"
    return ""


def zip_problem(info: zipfile.ZipInfo) -> str:
    """Why a zip entry may not be extracted ("" when it may)."""
    problem = path_problem(info.filename)
    if problem:
        return problem
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return "is a symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "is a device, FIFO or socket"
    return ""


@dataclass(frozen=True)
class ArchiveEntry:
    name: str
    directory: bool
    size: int
    open: Callable[[], IO[bytes]]


def refused(name: str, problem: str) -> ApiError:
    return ApiError(400, "invalid_argument", f"refused archive entry {name!r}: it {problem}; nothing was extracted")


def archive_entries(spool: IO[bytes], limit: int) -> tuple[list[ArchiveEntry], Callable[[], None]]:
    """Every entry of a tar (optionally compressed) or zip archive, each checked, their sizes
    bounded by `limit` in total (a small compressed body cannot unpack to more); and what closes
    the archive. A refused entry is a 400 naming it, before anything is written."""
    entries: list[ArchiveEntry] = []
    total = 0

    def count(name: str, size: int) -> None:
        nonlocal total
        total += max(size, 0)
        if total > limit:
            raise ApiError(413, "payload_too_large", f"the archive unpacks to more than {limit} bytes (at {name!r})")

    if zipfile.is_zipfile(spool):
        spool.seek(0)
        try:
            archive = zipfile.ZipFile(spool)
        except zipfile.BadZipFile as exc:
            raise ApiError(400, "invalid_argument", f"the zip archive is damaged: {exc}") from None
        for info in archive.infolist():
            problem = zip_problem(info)
            if problem:
                archive.close()
                raise refused(info.filename, problem)
            count(info.filename, info.file_size)
            entries.append(ArchiveEntry(info.filename, info.is_dir(), info.file_size, functools.partial(archive.open, info)))
        return entries, archive.close
    spool.seek(0)
    try:
        tar = tarfile.open(fileobj=spool, mode="r:*")
    except tarfile.TarError as exc:
        raise ApiError(400, "invalid_argument", f"the body is not a tar or zip archive: {exc}") from None
    try:
        while (member := tar.next()) is not None:
            problem = tar_problem(member)
            if problem:
                raise refused(member.name, problem)
            count(member.name, member.size)
            opener = functools.partial(_extracted, tar, member)
            entries.append(ArchiveEntry(member.name, member.isdir(), member.size, opener))
    except tarfile.TarError as exc:
        tar.close()
        raise ApiError(400, "invalid_argument", f"the tar archive is damaged: {exc}") from None
    except BaseException:
        tar.close()
        raise
    return entries, tar.close


def _extracted(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    source = tar.extractfile(member)
    assert source is not None  # a regular file: checked
    return source


@router.post(
    "/files/upload",
    name="upload_sandbox_files",
    summary="Extract a tar (optionally compressed) or zip archive, the raw body, into a directory",
    response_model=UploadView,
    responses=errors(*CALL_ERRORS, 413, e404=NOT_FOUND),
    # The archive's kind is told from its bytes: sent as octet-stream (x-tar, zip, gzip are taken too).
    openapi_extra={"requestBody": {"required": True, "content": binary("application/octet-stream")["content"]}},
)
async def upload(
    sandbox_id: str,
    request: Request,
    stubs: SandboxStubsDep,
    settings: SettingsDep,
    caller: CallerDep,
    path: Annotated[str, Query(description="The directory to extract into.")] = ".",
) -> JSONResponse:
    limit = settings.sandbox_file_max_bytes
    # Spooled to disk, so the archive can be checked whole before anything is written.
    with tempfile.SpooledTemporaryFile(max_size=WRITE_CHUNK_BYTES * 8) as spool:
        async for chunk in limited_body(request, limit):
            spool.write(chunk)
        entries, close = archive_entries(spool, limit)
        try:
            files = directories = total = 0
            for entry in entries:
                target = posixpath.normpath(posixpath.join(path, entry.name))
                if entry.directory:
                    await operate(stubs, caller, calls_pb2.OperateSandboxFileRequest(sandbox_id=sandbox_id, mkdir=target))
                    directories += 1
                    continue
                with entry.open() as source:
                    await write_stream(stubs, caller, sandbox_id, target, _read_chunks(source))
                files += 1
                total += entry.size
        finally:
            close()
    return JSONResponse({"path": path, "files": files, "directories": directories, "bytes": total})


async def _read_chunks(source: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := source.read(WRITE_CHUNK_BYTES):
        yield chunk


@router.get(
    "/files/download",
    name="download_sandbox_files",
    summary="A directory as a tar archive",
    response_class=Response,
    responses={200: binary("application/x-tar"), **errors(*CALL_ERRORS, 413, e404=NOT_FOUND)},
)
async def download(
    sandbox_id: str, stubs: SandboxStubsDep, settings: SettingsDep, caller: CallerDep, path: Annotated[str, Query()] = "."
) -> Response:
    limit = settings.sandbox_file_max_bytes
    spool = tempfile.SpooledTemporaryFile(max_size=WRITE_CHUNK_BYTES * 8)  # closed after streaming
    try:
        with tarfile.open(fileobj=spool, mode="w") as archive:
            total = 0
            pending = ["."]
            seen = 0
            while pending:
                relative = pending.pop()
                listing = await operate(
                    stubs, caller,
                    calls_pb2.OperateSandboxFileRequest(sandbox_id=sandbox_id, list=posixpath.join(path, relative)),
                )
                for entry in listing.entries:
                    seen += 1
                    if seen > MAX_DOWNLOAD_ENTRIES:
                        raise ApiError(413, "payload_too_large", f"{path} has more than {MAX_DOWNLOAD_ENTRIES} entries")
                    name = posixpath.normpath(posixpath.join(relative, entry.name))
                    info = tarfile.TarInfo(name)
                    info.mtime = int(entry.mtime)
                    if entry.type == "directory":
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        archive.addfile(info)
                        pending.append(name)
                    elif entry.type == "file":
                        data = bytearray()
                        _, chunks = await read_stream(stubs, caller, sandbox_id, posixpath.join(path, name))
                        async for chunk in chunks:
                            data += chunk
                        total += len(data)
                        if total > limit:
                            raise ApiError(413, "payload_too_large", f"{path} holds more than the download limit of {limit} bytes")
                        info.size, info.mode = len(data), 0o644
                        archive.addfile(info, _BytesReader(bytes(data)))
                    # Links and special files are left out: the archive holds only what is there.
        spool.seek(0)
    except BaseException:
        spool.close()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            while chunk := spool.read(WRITE_CHUNK_BYTES):
                yield chunk
        finally:
            spool.close()

    return StreamingResponse(body(), media_type="application/x-tar")


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._at + size
        chunk = bytes(self._data[self._at : end])
        self._at += len(chunk)
        return chunk


# --- desktop ---------------------------------------------------------------------------------

GUI_ACTION = TypeAdapter(GuiStep)
# A gui step (`tool` may be left out: it is taken as "gui"): one of the actions, by `action`.
GUI_ACTION_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/GuiStep"},
    "example": {"tool": "gui", "action": "click", "x": 100, "y": 200},
}}}}


async def desktop_action(stubs: SandboxStubs, caller: Metadata, sandbox_id: str, document: Any) -> calls_pb2.RunSandboxDesktopActionResponse:
    if not isinstance(document, dict):
        raise ApiError(400, "invalid_argument", "the body must be a JSON object: a gui action")
    try:
        model = GUI_ACTION.validate_python({"tool": "gui", **document})
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None
    action = GuiTool().to_proto(model)
    reply: calls_pb2.RunSandboxDesktopActionResponse = await stubs.calls.unary(
        "RunSandboxDesktopAction", sandbox_id,
        calls_pb2.RunSandboxDesktopActionRequest(sandbox_id=sandbox_id, action=action), caller, 120.0,
    )
    return reply


@router.post(
    "/desktop/actions",
    name="sandbox_desktop_action",
    summary="A desktop action (the gui step's models: click, type, key, scroll, screenshot...)",
    response_model=DesktopActionResult,
    responses=errors(*CALL_ERRORS, 413, e404=NOT_FOUND, e409="The sandbox has ended, or has no desktop."),
    openapi_extra=GUI_ACTION_BODY,
)
async def run_desktop_action(
    sandbox_id: str, request: Request, stubs: SandboxStubsDep, settings: SettingsDep, caller: CallerDep
) -> JSONResponse:
    document = parse_json(await read_body(request, settings.max_request_bytes))
    reply = await desktop_action(stubs, caller, sandbox_id, document)
    result: dict[str, Any] = json.loads(reply.result) if reply.result else {}
    if reply.png:
        result["png_base64"] = base64.b64encode(reply.png).decode("ascii")
    return JSONResponse(result)


@router.get(
    "/desktop/screenshot",
    name="sandbox_screenshot",
    summary="A screenshot of the sandbox's desktop (image/png)",
    response_class=Response,
    responses={200: binary("image/png"), **errors(*CALL_ERRORS, e404=NOT_FOUND, e409="The sandbox has ended, or has no desktop.")},
)
async def screenshot(
    sandbox_id: str,
    stubs: SandboxStubsDep,
    caller: CallerDep,
    max_width: Annotated[int, Query(ge=0)] = 0,
    max_height: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    reply = await desktop_action(
        stubs, caller, sandbox_id, {"action": "screenshot", "max_width": max_width, "max_height": max_height}
    )
    return Response(reply.png, media_type="image/png")


# --- history ---------------------------------------------------------------------------------


@router.get(
    "/history",
    name="sandbox_history",
    summary="The sandbox's recorded calls (from the memory service)",
    response_model=HistoryResponse,
    responses=errors(400, 404, *UPSTREAM, e404="Unknown sandbox."),
)
async def sandbox_history(
    sandbox_id: str,
    stubs: SandboxStubsDep,
    backends: BackendsDep,
    caller: CallerDep,
    after: Annotated[int, Query(ge=0, description="Only events after this sequence.")] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> JSONResponse:
    async with upstream("scheduler"):  # 404 for another tenant's sandbox
        await stubs.sandboxes.GetSandbox(sandbox_pb2.GetSandboxRequest(sandbox_id=sandbox_id), metadata=caller, timeout=stubs.timeout)
    async with upstream("memory"):
        reply = await backends.memory.ListEvents(
            memory_pb2.ListEventsRequest(task_id=sandbox_id, after_sequence=after, limit=limit), timeout=backends.timeout
        )
    events = [HistoryEventView.from_proto(e) for e in reply.events]
    next_after = events[-1].sequence if events else after
    return JSONResponse(HistoryResponse(task_id=sandbox_id, events=events, next_after=next_after).model_dump(mode="json"))

