"""The asyncio SDK: `AsyncSandbox`, its `files`, command handles and `run_task_async`.

    from corral import AsyncSandbox
    async with await AsyncSandbox.create(desktop=True, ttl=3600) as sb:
        print((await sb.run_shell("pip --version")).stdout)

The same names and arguments as sync.py (each call awaited); both send the calls of calls.py.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, overload

import httpx

from corral import errors
from corral.sdk import calls
from corral.sdk._http import Call, Connection, SseParser, check, error_event, transport_error
from corral.sdk.results import (
    CodeContext,
    CommandResult,
    Execution,
    FileInfo,
    OnOutput,
    OutputChunk,
    OutputCollector,
    TaskResult,
)


class AsyncClient:
    """One HTTP connection pool to the gateway, with the SDK's error mapping."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.connection = Connection.resolve(url, api_key)
        self.http = httpx.AsyncClient(base_url=self.connection.url, headers=self.connection.headers, timeout=timeout)

    async def send(self, call: Call) -> httpx.Response:
        try:
            return check(await self.http.request(call.method, call.path, **call.request_args()))
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.connection) from None

    async def json(self, call: Call) -> Any:
        return (await self.send(call)).json()

    async def events(self, call: Call) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The Server-Sent Events of a streaming answer, as (event, data)."""
        try:
            async with self.http.stream(call.method, call.path, **call.request_args()) as response:
                if response.status_code >= 400:
                    await response.aread()
                check(response)
                parser = SseParser()
                async for line in response.aiter_lines():
                    for event in parser.feed(line):
                        yield event.event, event.data
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.connection) from None

    async def close(self) -> None:
        await self.http.aclose()


class AsyncCommandStream:
    """A command's output as it is produced (iterate it); `.result` once it has ended."""

    def __init__(self, events: AsyncIterator[tuple[str, dict[str, Any]]]) -> None:
        self._events = events
        self.result: CommandResult | None = None

    async def __aiter__(self) -> AsyncIterator[OutputChunk]:
        collector = OutputCollector()
        async for event, data in self._events:
            if event == "error":
                raise error_event(data)
            chunk = collector.feed(event, data)
            if chunk is not None:
                yield chunk
        self.result = collector.result


class AsyncCommandHandle:
    """A command started with `background=True`: wait for it, read or feed it, signal or kill it."""

    def __init__(self, client: AsyncClient, sandbox_id: str, command_id: str) -> None:
        self._client, self.sandbox_id, self.id = client, sandbox_id, command_id

    async def wait(self, check: bool = False) -> CommandResult:
        """Waits until it ends; its result, output included."""
        stream = await self.output()
        async for _ in stream:
            pass
        if stream.result is None:
            raise errors.Unavailable(f"command {self.id}'s output ended without its exit")
        return stream.result.checked(check)

    async def output(self) -> AsyncCommandStream:
        """Its output from its start, live until it ends (iterate it; `.result` after)."""
        return AsyncCommandStream(self._client.events(calls.command_output(self.sandbox_id, self.id)))

    async def state(self) -> str:
        """running, exited... (GET .../commands/{id})."""
        return str((await self._client.json(calls.command_status(self.sandbox_id, self.id))).get("state", ""))

    async def send_stdin(self, data: str | bytes, close: bool = False) -> None:
        """Writes to its stdin (started with stdin=True); `close` closes stdin after."""
        content = data.encode() if isinstance(data, str) else data
        await self._client.send(calls.command_stdin(self.sandbox_id, self.id, content, close))

    async def close_stdin(self) -> None:
        await self._client.send(calls.command_stdin(self.sandbox_id, self.id, b"", close=True))

    async def signal(self, signal: str = "SIGTERM") -> None:
        await self._client.send(calls.command_signal(self.sandbox_id, self.id, signal))

    async def kill(self) -> None:
        """Kills its whole process tree."""
        await self._client.send(calls.command_kill(self.sandbox_id, self.id))


class AsyncFiles:
    """The sandbox's files beyond read_file / write_file: listing, upload, download..."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    async def list(self, path: str = ".") -> list[FileInfo]:
        data = await self._sandbox.client.json(calls.list_files(self._sandbox.id, path))
        return [FileInfo.from_json(e) for e in data.get("entries", [])]

    async def stat(self, path: str) -> FileInfo:
        return FileInfo.from_json(await self._sandbox.client.json(calls.stat_file(self._sandbox.id, path)))

    async def make_dir(self, path: str) -> None:
        await self._sandbox.client.send(calls.make_dir(self._sandbox.id, path))

    async def remove(self, path: str) -> None:
        await self._sandbox.client.send(calls.remove(self._sandbox.id, path))

    async def rename(self, source: str, target: str) -> None:
        await self._sandbox.client.send(calls.rename(self._sandbox.id, source, target))

    async def upload(self, directory: str, tar: bytes) -> None:
        """Extracts a tar archive into `directory` (entries leading out are refused)."""
        await self._sandbox.client.send(calls.upload(self._sandbox.id, directory, tar))

    async def download(self, directory: str) -> bytes:
        """`directory` as a tar archive."""
        return (await self._sandbox.client.send(calls.download(self._sandbox.id, directory))).content


class AsyncSandbox:
    """A long-lived sandbox, driven one call at a time. Made by `create` or `connect`; `with`
    deletes it at the end of the block (when this process created it)."""

    def __init__(self, client: AsyncClient, info: dict[str, Any], owned: bool) -> None:
        self.client = client
        self.info = info
        self.id: str = str(info["sandbox_id"])
        # Shown once, at creation: noVNC with control and Jupyter (token), view-only (view_token).
        self.token: str = str(info.get("token", ""))
        self.view_token: str = str(info.get("view_token", ""))
        self._owned = owned
        self._default_context: CodeContext | None = None
        self.files = AsyncFiles(self)

    @classmethod
    async def create(
        cls,
        *,
        desktop: bool = False,
        ttl: float | None = None,
        network: calls.NetworkArg = False,
        env: Mapping[str, str] | None = None,
        limits: Mapping[str, int] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        client: AsyncClient | None = None,
    ) -> AsyncSandbox:
        """A new sandbox (`client`: an open connection to use instead of url/api_key)."""
        own = client is None
        client = client or AsyncClient(url, api_key)
        try:
            info = await client.json(calls.create_sandbox(desktop, ttl, network, env, limits))
        except BaseException:
            if own:
                await client.close()
            raise
        return cls(client, info, owned=True)

    @classmethod
    async def connect(cls, sandbox_id: str, *, url: str | None = None, api_key: str | None = None,
                      client: AsyncClient | None = None) -> AsyncSandbox:
        """An existing sandbox, by id (NotFound when the caller's tenant has none such)."""
        own = client is None
        client = client or AsyncClient(url, api_key)
        try:
            info = await client.json(calls.get_sandbox(sandbox_id))
        except BaseException:
            if own:
                await client.close()
            raise
        return cls(client, info, owned=False)

    @staticmethod
    async def list(*, include_ended: bool = False, url: str | None = None, api_key: str | None = None,
                   client: AsyncClient | None = None) -> builtins.list[dict[str, Any]]:
        """The caller's sandboxes (as the gateway describes them), also ended ones when asked."""
        own = client is None
        client = client or AsyncClient(url, api_key)
        try:
            return builtins.list((await client.json(calls.list_sandboxes(include_ended))).get("sandboxes", []))
        finally:
            if own:
                await client.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self._owned:
                await self.kill()
        finally:
            await self.client.close()

    # --- lifetime ----------------------------------------------------------------------------

    async def refresh(self) -> dict[str, Any]:
        self.info = {**self.info, **await self.client.json(calls.get_sandbox(self.id))}
        return self.info

    async def extend(self, ttl: float | None = None) -> None:
        await self.client.send(calls.extend_sandbox(self.id, ttl))

    async def set_network(self, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> None:
        """Replaces the sandbox's network rules (it must have been created with network)."""
        await self.client.send(calls.set_network(self.id, allow, deny))

    async def kill(self) -> None:
        """Deletes the sandbox: its processes, files and desktop go."""
        try:
            await self.client.send(calls.delete_sandbox(self.id))
        except errors.NotFound:
            pass

    # --- commands ----------------------------------------------------------------------------

    @overload
    async def run_shell(
        self, command: str, *, stream: Literal[False] = False, background: Literal[False] = False,
        timeout: float | None = None, cwd: str | None = None, env: Mapping[str, str] | None = None,
        on_stdout: OnOutput | None = None, on_stderr: OnOutput | None = None, check: bool = False,
    ) -> CommandResult: ...

    @overload
    async def run_shell(
        self, command: str, *, stream: Literal[True], background: Literal[False] = False,
        timeout: float | None = None, cwd: str | None = None, env: Mapping[str, str] | None = None,
        on_stdout: OnOutput | None = None, on_stderr: OnOutput | None = None, check: bool = False,
    ) -> AsyncCommandStream: ...

    @overload
    async def run_shell(
        self, command: str, *, stream: Literal[False] = False, background: Literal[True],
        timeout: float | None = None, cwd: str | None = None, env: Mapping[str, str] | None = None,
        on_stdout: OnOutput | None = None, on_stderr: OnOutput | None = None, check: bool = False,
        stdin: bool = False,
    ) -> AsyncCommandHandle: ...

    async def run_shell(
        self, command: str, *, stream: bool = False, background: bool = False,
        timeout: float | None = None, cwd: str | None = None, env: Mapping[str, str] | None = None,
        on_stdout: OnOutput | None = None, on_stderr: OnOutput | None = None, check: bool = False,
        stdin: bool = False,
    ) -> CommandResult | AsyncCommandStream | AsyncCommandHandle:
        """Runs `/bin/sh -c command` in the sandbox's workspace: its result; with stream=True
        its output as it comes (iterate it); with background=True a handle at once (stdin=True
        keeps its stdin open for the handle's send_stdin)."""
        return await self._run("shell", command, stream, background, timeout, cwd, env, on_stdout, on_stderr, check, stdin)

    async def run_python(
        self, code: str, *, timeout: float | None = None, cwd: str | None = None,
        env: Mapping[str, str] | None = None, on_stdout: OnOutput | None = None,
        on_stderr: OnOutput | None = None, check: bool = False,
    ) -> CommandResult:
        result = await self._run("python", code, False, False, timeout, cwd, env, on_stdout, on_stderr, check)
        assert isinstance(result, CommandResult)
        return result

    async def run_typescript(
        self, code: str, *, timeout: float | None = None, cwd: str | None = None,
        env: Mapping[str, str] | None = None, on_stdout: OnOutput | None = None,
        on_stderr: OnOutput | None = None, check: bool = False,
    ) -> CommandResult:
        result = await self._run("typescript", code, False, False, timeout, cwd, env, on_stdout, on_stderr, check)
        assert isinstance(result, CommandResult)
        return result

    async def _run(
        self, tool: calls.Tool, source: str, stream: bool, background: bool, timeout: float | None,
        cwd: str | None, env: Mapping[str, str] | None, on_stdout: OnOutput | None,
        on_stderr: OnOutput | None, check: bool, stdin: bool = False,
    ) -> CommandResult | AsyncCommandStream | AsyncCommandHandle:
        body = calls.command_body(tool, source, timeout, cwd, env, background, stdin)
        if background:
            data = await self.client.json(calls.run_command(self.id, body))
            return AsyncCommandHandle(self.client, self.id, str(data["command_id"]))
        if stream:
            return AsyncCommandStream(self.client.events(calls.run_command(self.id, body, stream=True)))
        if on_stdout is None and on_stderr is None:
            return CommandResult.from_json(await self.client.json(calls.run_command(self.id, body))).checked(check)
        live = AsyncCommandStream(self.client.events(calls.run_command(self.id, body, stream=True)))
        async for chunk in live:
            chunk.hand_to(on_stdout, on_stderr)
        if live.result is None:
            raise errors.Unavailable("the command's output ended without its result")
        return live.result.checked(check)

    # --- code contexts -----------------------------------------------------------------------

    async def create_code_context(self, language: str = "python", cwd: str | None = None) -> CodeContext:
        """Starts a Jupyter kernel in the sandbox (in `cwd`, relative to the workspace)."""
        return CodeContext.from_json(await self.client.json(calls.create_code_context(self.id, language, cwd)))

    async def run_code(
        self, code: str, *, context: CodeContext | str | None = None, timeout: float | None = None
    ) -> Execution:
        """Runs `code` as a notebook cell in `context` (default: one made on first use, kept for
        the next calls): its output (`.logs`), rich results (`.results`: text, png, html, json...)
        and the exception it raised (`.error`; a TimeoutError when interrupted at `timeout`)."""
        if context is None:
            if self._default_context is None:
                self._default_context = await self.create_code_context()
            context = self._default_context
        context_id = context if isinstance(context, str) else context.id
        return Execution.from_json(await self.client.json(calls.run_code(self.id, context_id, code, timeout)))

    async def remove_code_context(self, context: CodeContext | str) -> None:
        """Stops the context's kernel (its variables go)."""
        context_id = context if isinstance(context, str) else context.id
        await self.client.send(calls.delete_code_context(self.id, context_id))
        if self._default_context is not None and self._default_context.id == context_id:
            self._default_context = None

    # --- files -------------------------------------------------------------------------------

    @overload
    async def read_file(self, path: str, *, binary: Literal[False] = False) -> str: ...

    @overload
    async def read_file(self, path: str, *, binary: Literal[True]) -> bytes: ...

    async def read_file(self, path: str, *, binary: bool = False) -> str | bytes:
        """A file's content (relative paths start at /workspace): text, or bytes with binary=True."""
        content = (await self.client.send(calls.read_file(self.id, path))).content
        return content if binary else content.decode("utf-8", "replace")

    async def write_file(self, path: str, content: str | bytes) -> None:
        """Writes (creates or replaces) a file, making its parent directories."""
        await self.client.send(calls.write_file(self.id, path, content.encode() if isinstance(content, str) else content))

    # --- desktop -----------------------------------------------------------------------------

    async def screenshot(self, max_width: int = 0, max_height: int = 0) -> bytes:
        """The desktop as PNG bytes (downscaled to fit max_width x max_height when given)."""
        return (await self.client.send(calls.screenshot(self.id, max_width, max_height))).content

    async def desktop(self, action: str, **fields: Any) -> dict[str, Any]:
        """Any gui action (README, "The desktop"): `sb.desktop("drag", x=1, y=2, to_x=3, to_y=4)`."""
        answer: dict[str, Any] = await self.client.json(calls.desktop_action(self.id, action, **fields))
        return answer

    async def click(self, x: int, y: int, button: str = "left", count: int = 1) -> None:
        await self.desktop("click", x=x, y=y, button=button, count=count)

    async def double_click(self, x: int, y: int) -> None:
        await self.desktop("double_click", x=x, y=y)

    async def move(self, x: int, y: int) -> None:
        await self.desktop("move", x=x, y=y)

    async def scroll(self, direction: str = "down", amount: int = 1, x: int | None = None, y: int | None = None) -> None:
        await self.desktop("scroll", direction=direction, amount=amount, x=x, y=y)

    async def type(self, text: str) -> None:
        await self.desktop("type", text=text)

    async def key(self, keys: str) -> None:
        """xdotool key names and combinations: "ctrl+s", "Return"."""
        await self.desktop("key", keys=keys)

    # --- Anthropic's computer-use tools ---------------------------------------------------------

    async def computer_use(
        self, tool: calls.ComputerUseTool, tool_input: Mapping[str, Any], tool_use_id: str = ""
    ) -> dict[str, Any]:
        """Carries out a tool_use block of Anthropic's `computer`, `bash` or
        `str_replace_based_edit_tool` tool (its `name` and `input`, as the model wrote them); the
        tool_result block to send back (content: text, or a base64 PNG for screenshots; is_error
        when the input could not be carried out)."""
        answer: dict[str, Any] = await self.client.json(calls.computer_use(self.id, tool, tool_input, tool_use_id))
        return answer

    async def computer(self, action: str, **params: Any) -> dict[str, Any]:
        """One `computer` action: `sb.computer("left_click", coordinate=[10, 20])` (coordinates in
        the scaled display of `computer_tool()`; display_width_px/_height_px to declare another)."""
        return await self.computer_use("computer", {"action": action, **params})

    async def bash(self, command: str | None = None, *, restart: bool = False) -> dict[str, Any]:
        """A command in the sandbox's persistent bash (cwd and variables stay), or restart it."""
        return await self.computer_use("bash", {"restart": True} if restart else {"command": command})

    async def text_editor(self, command: str, path: str, **params: Any) -> dict[str, Any]:
        """view (view_range), create (file_text), str_replace (old_str, new_str), insert
        (insert_line, new_str) or undo_edit, on an absolute path in the sandbox."""
        return await self.computer_use("str_replace_based_edit_tool", {"command": command, "path": path, **params})

    async def computer_tool(self) -> dict[str, Any]:
        """The `computer` tool definition for the Messages API, with this desktop's scaled size."""
        definition: dict[str, Any] = (await self.client.json(calls.computer_definition(self.id)))["tool"]
        return definition

    # --- tasks -------------------------------------------------------------------------------

    async def run_task(self, steps: Sequence[Mapping[str, Any]], **task: Any) -> TaskResult:
        """A task (steps as in the task format) run in this sandbox, waited for."""
        task_spec = {"steps": list(steps), **task, "sandbox_id": self.id}
        return await (await AsyncTask.submit(task_spec, client=self.client)).wait()


class AsyncTask:
    """A one-shot task (or a task in a sandbox): submit it, follow its events, wait, cancel
    (the asyncio twin of `Task`)."""

    RESUMES = 5

    def __init__(self, client: AsyncClient, task_id: str, owns_client: bool = False) -> None:
        self.client, self.id = client, task_id
        self._owns_client = owns_client
        self.last_sequence = 0

    @classmethod
    async def submit(cls, spec: Mapping[str, Any], *, url: str | None = None, api_key: str | None = None,
                     client: AsyncClient | None = None) -> AsyncTask:
        own = client is None
        client = client or AsyncClient(url, api_key)
        try:
            task_id = str((await client.json(calls.submit_task(spec)))["task_id"])
        except BaseException:
            if own:
                await client.close()
            raise
        return cls(client, task_id, owns_client=own)

    @classmethod
    async def connect(cls, task_id: str, *, url: str | None = None, api_key: str | None = None,
                      client: AsyncClient | None = None) -> AsyncTask:
        task = cls(client or AsyncClient(url, api_key), task_id, owns_client=client is None)
        await task.status()
        return task

    @staticmethod
    async def list(*, state: str | None = None, limit: int = 50, url: str | None = None,
                   api_key: str | None = None, client: AsyncClient | None = None) -> builtins.list[TaskResult]:
        own = client is None
        client = client or AsyncClient(url, api_key)
        found: builtins.list[TaskResult] = []
        token = ""
        try:
            while len(found) < limit:
                page = await client.json(calls.list_tasks(state, min(500, limit - len(found)), token))
                found += [TaskResult.from_json(t) for t in page.get("tasks", [])]
                token = page.get("next_page_token") or ""
                if not token:
                    break
        finally:
            if own:
                await client.close()
        return found[:limit]

    async def __aenter__(self) -> AsyncTask:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_client:
            await self.client.close()

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Its events as (type, data), replayed then live, until `finished` (a dropped stream is
        picked up again after the last event seen)."""
        resumes = 0
        while True:
            try:
                async for event, data in self.client.events(calls.task_events(self.id, self.last_sequence)):
                    self.last_sequence = max(self.last_sequence, int(data.get("sequence", 0) or 0))
                    resumes = 0
                    if event == "error":
                        raise error_event(data)
                    yield event, data
                    if event == "finished":
                        return
                return
            except errors.Unavailable:
                resumes += 1
                if resumes > self.RESUMES:
                    raise
                await asyncio.sleep(min(2.0, 0.2 * resumes))

    async def status(self) -> TaskResult:
        return TaskResult.from_json(await self.client.json(calls.get_task(self.id)))

    async def wait(self, on_event: Callable[[str, dict[str, Any]], None] | None = None) -> TaskResult:
        async for event, data in self.events():
            if on_event is not None:
                on_event(event, data)
        return await self.status()

    async def cancel(self) -> TaskResult:
        return TaskResult.from_json(await self.client.json(calls.cancel_task(self.id)))


async def run_task_async(
    steps: Sequence[Mapping[str, Any]],
    *,
    url: str | None = None,
    api_key: str | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    **task: Any,
) -> TaskResult:
    """Submits a one-shot task (its own fresh sandbox), follows it, returns its final status.
    `task` takes the task format's other fields (network, env, limits, step_timeout...)."""
    async with await AsyncTask.submit({"steps": list(steps), **task}, url=url, api_key=api_key) as submitted:
        return await submitted.wait(on_event)
