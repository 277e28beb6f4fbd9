"""The blocking SDK: `Sandbox`, its `files`, command handles and `run_task`.

    from corral import Sandbox
    with Sandbox.create(desktop=True, ttl=3600) as sb:
        print(sb.run_shell("pip --version").stdout)

aio.py is the same API with `async`; both send the calls built in calls.py.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload
from urllib.parse import unquote

from corral import errors
from corral.sdk import calls
from corral.sdk._http import Call, Connection, SseParser, error_event
from corral.sdk._wire import Response, Stream, Wire

if TYPE_CHECKING:
    from corral.sdk.results import (
        CodeContext,
        CommandResult,
        Execution,
        FileInfo,
        OnOutput,
        OutputChunk,
        TaskResult,
    )

# The result types (frozen dataclasses: their module costs more to import than `corral run` does
# with everything else) are imported where a call first builds one, not here.


class Client:
    """HTTP to the gateway (kept-alive connections: see _wire.py), with the SDK's error mapping."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.connection = Connection.resolve(url, api_key)
        self.wire = Wire(self.connection, timeout)

    def send(self, call: Call) -> Response:
        return self.wire.request(call)

    def json(self, call: Call) -> Any:
        return self.send(call).json()

    def events(self, call: Call, last: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """The Server-Sent Events of a streaming answer, as (event, data) (see read_events); the
        request is sent when the first is asked for."""
        yield from self.read_events(self.wire.open_stream(call), last)

    @staticmethod
    def read_events(stream: Stream, last: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """An open stream's events, as (event, data); it is closed at the end. The answer ends
        after an event named `last`: it is read to its end before that event is handed over, so
        that its connection serves the next request (one left mid-stream is closed)."""
        try:
            lines = stream.lines()
            parser = SseParser()
            for line in lines:
                for event in parser.feed(line):
                    if event.event == last:
                        for _ in lines:
                            pass
                    yield event.event, event.data
        finally:
            stream.close()

    def close(self) -> None:
        self.wire.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class CommandStream:
    """A command's output as it is produced (iterate it); `.result` once it has ended."""

    def __init__(self, events: Iterator[tuple[str, dict[str, Any]]]) -> None:
        self._events = events
        self.result: CommandResult | None = None

    def __iter__(self) -> Iterator[OutputChunk]:
        from corral.sdk.results import OutputCollector

        collector = OutputCollector()
        for event, data in self._events:
            if event == "error":
                raise error_event(data)
            chunk = collector.feed(event, data)
            if chunk is not None:
                yield chunk
        self.result = collector.result


class CommandHandle:
    """A command started with `background=True`: wait for it, read or feed it, signal or kill it."""

    def __init__(self, client: Client, sandbox_id: str, command_id: str) -> None:
        self._client, self.sandbox_id, self.id = client, sandbox_id, command_id

    def wait(self, check: bool = False) -> CommandResult:
        """Waits until it ends; its result, output included."""
        stream = self.output()
        for _ in stream:
            pass
        if stream.result is None:
            raise errors.Unavailable(f"command {self.id}'s output ended without its exit")
        return stream.result.checked(check)

    def output(self) -> CommandStream:
        """Its output from its start, live until it ends (iterate it; `.result` after)."""
        return CommandStream(self._client.events(calls.command_output(self.sandbox_id, self.id)))

    def state(self) -> str:
        """running, exited... (GET .../commands/{id})."""
        return str((self._client.json(calls.command_status(self.sandbox_id, self.id))).get("state", ""))

    def send_stdin(self, data: str | bytes, close: bool = False) -> None:
        """Writes to its stdin (started with stdin=True); `close` closes stdin after."""
        content = data.encode() if isinstance(data, str) else data
        self._client.send(calls.command_stdin(self.sandbox_id, self.id, content, close))

    def close_stdin(self) -> None:
        self._client.send(calls.command_stdin(self.sandbox_id, self.id, b"", close=True))

    def signal(self, signal: str = "SIGTERM") -> None:
        self._client.send(calls.command_signal(self.sandbox_id, self.id, signal))

    def kill(self) -> None:
        """Kills its whole process tree."""
        self._client.send(calls.command_kill(self.sandbox_id, self.id))


class Files:
    """The sandbox's files beyond read_file / write_file: listing, upload, download..."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def list(self, path: str = ".") -> list[FileInfo]:
        data = self._sandbox.client.json(calls.list_files(self._sandbox.id, path))
        from corral.sdk.results import FileInfo

        return [FileInfo.from_json(e) for e in data.get("entries", [])]

    def stat(self, path: str) -> FileInfo:
        from corral.sdk.results import FileInfo

        return FileInfo.from_json(self._sandbox.client.json(calls.stat_file(self._sandbox.id, path)))

    def make_dir(self, path: str) -> None:
        self._sandbox.client.send(calls.make_dir(self._sandbox.id, path))

    def remove(self, path: str) -> None:
        self._sandbox.client.send(calls.remove(self._sandbox.id, path))

    def rename(self, source: str, target: str) -> None:
        self._sandbox.client.send(calls.rename(self._sandbox.id, source, target))

    def upload(self, directory: str, tar: bytes) -> None:
        """Extracts a tar archive into `directory` (entries leading out are refused)."""
        self._sandbox.client.send(calls.upload(self._sandbox.id, directory, tar))

    def download(self, directory: str) -> bytes:
        """`directory` as a tar archive."""
        return self._sandbox.client.send(calls.download(self._sandbox.id, directory)).content


class Sandbox:
    """A long-lived sandbox, driven one call at a time. Made by `create` or `connect`; `with`
    deletes it at the end of the block (when this process created it)."""

    def __init__(self, client: Client, info: dict[str, Any], owned: bool) -> None:
        self.client = client
        self.info = info
        self.id: str = str(info["sandbox_id"])
        # Shown once, at creation: noVNC with control and Jupyter (token), view-only (view_token).
        self.token: str = str(info.get("token", ""))
        self.view_token: str = str(info.get("view_token", ""))
        self._owned = owned
        self._default_context: CodeContext | None = None
        self.files = Files(self)

    @classmethod
    def create(
        cls,
        *,
        desktop: bool = False,
        ttl: float | None = None,
        network: calls.NetworkArg = False,
        env: Mapping[str, str] | None = None,
        limits: Mapping[str, int] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        client: Client | None = None,
    ) -> Sandbox:
        """A new sandbox (`client`: an open connection to use instead of url/api_key)."""
        own = client is None
        client = client or Client(url, api_key)
        try:
            info = client.json(calls.create_sandbox(desktop, ttl, network, env, limits))
        except BaseException:
            if own:
                client.close()
            raise
        return cls(client, info, owned=True)

    @classmethod
    def connect(cls, sandbox_id: str, *, url: str | None = None, api_key: str | None = None,
                client: Client | None = None) -> Sandbox:
        """An existing sandbox, by id (NotFound when the caller's tenant has none such)."""
        own = client is None
        client = client or Client(url, api_key)
        try:
            info = client.json(calls.get_sandbox(sandbox_id))
        except BaseException:
            if own:
                client.close()
            raise
        return cls(client, info, owned=False)

    @staticmethod
    def list(*, include_ended: bool = False, url: str | None = None, api_key: str | None = None,
             client: Client | None = None) -> builtins.list[dict[str, Any]]:
        """The caller's sandboxes (as the gateway describes them), also ended ones when asked."""
        own = client is None
        client = client or Client(url, api_key)
        try:
            return builtins.list(client.json(calls.list_sandboxes(include_ended)).get("sandboxes", []))
        finally:
            if own:
                client.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self._owned:
                self.kill()
        finally:
            self.client.close()

    # --- lifetime ----------------------------------------------------------------------------

    def refresh(self) -> dict[str, Any]:
        self.info = {**self.info, **self.client.json(calls.get_sandbox(self.id))}
        return self.info

    def extend(self, ttl: float | None = None) -> None:
        self.client.send(calls.extend_sandbox(self.id, ttl))

    def set_network(self, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> None:
        """Replaces the sandbox's network rules (it must have been created with network)."""
        self.client.send(calls.set_network(self.id, allow, deny))

    def kill(self) -> None:
        """Deletes the sandbox: its processes, files and desktop go."""
        try:
            self.client.send(calls.delete_sandbox(self.id))
        except errors.NotFound:
            pass

    # --- commands ----------------------------------------------------------------------------

    @overload
    def run_shell(
        self, command: str, *, stream: Literal[False] = False, background: Literal[False] = False,
        timeout: float | None = None, cwd: str | None = None, env: Mapping[str, str] | None = None,
        on_stdout: OnOutput | None = None, on_stderr: OnOutput | None = None, check: bool = False,
    ) -> CommandResult: ...

    @overload
    def run_shell(
        self, command: str, *, stream: Literal[True], background: Literal[False] = False,
        timeout: float | None = None, cwd: str | None = None, env: Mapping[str, str] | None = None,
        on_stdout: OnOutput | None = None, on_stderr: OnOutput | None = None, check: bool = False,
    ) -> CommandStream: ...

    @overload
    def run_shell(
        self, command: str, *, stream: Literal[False] = False, background: Literal[True],
        timeout: float | None = None, cwd: str | None = None, env: Mapping[str, str] | None = None,
        on_stdout: OnOutput | None = None, on_stderr: OnOutput | None = None, check: bool = False,
        stdin: bool = False,
    ) -> CommandHandle: ...

    def run_shell(
        self, command: str, *, stream: bool = False, background: bool = False,
        timeout: float | None = None, cwd: str | None = None, env: Mapping[str, str] | None = None,
        on_stdout: OnOutput | None = None, on_stderr: OnOutput | None = None, check: bool = False,
        stdin: bool = False,
    ) -> CommandResult | CommandStream | CommandHandle:
        """Runs `/bin/sh -c command` in the sandbox's workspace: its result; with stream=True
        its output as it comes (iterate it); with background=True a handle at once (stdin=True
        keeps its stdin open for the handle's send_stdin)."""
        return self._run("shell", command, stream, background, timeout, cwd, env, on_stdout, on_stderr, check, stdin)

    def run_python(
        self, code: str, *, timeout: float | None = None, cwd: str | None = None,
        env: Mapping[str, str] | None = None, on_stdout: OnOutput | None = None,
        on_stderr: OnOutput | None = None, check: bool = False,
    ) -> CommandResult:
        result = self._run("python", code, False, False, timeout, cwd, env, on_stdout, on_stderr, check)
        from corral.sdk.results import CommandResult

        assert isinstance(result, CommandResult)
        return result

    def run_typescript(
        self, code: str, *, timeout: float | None = None, cwd: str | None = None,
        env: Mapping[str, str] | None = None, on_stdout: OnOutput | None = None,
        on_stderr: OnOutput | None = None, check: bool = False,
    ) -> CommandResult:
        result = self._run("typescript", code, False, False, timeout, cwd, env, on_stdout, on_stderr, check)
        from corral.sdk.results import CommandResult

        assert isinstance(result, CommandResult)
        return result

    def _run(
        self, tool: calls.Tool, source: str, stream: bool, background: bool, timeout: float | None,
        cwd: str | None, env: Mapping[str, str] | None, on_stdout: OnOutput | None,
        on_stderr: OnOutput | None, check: bool, stdin: bool = False,
    ) -> CommandResult | CommandStream | CommandHandle:
        body = calls.command_body(tool, source, timeout, cwd, env, background, stdin)
        if background:
            data = self.client.json(calls.run_command(self.id, body))
            return CommandHandle(self.client, self.id, str(data["command_id"]))
        if stream:
            return CommandStream(self.client.events(calls.run_command(self.id, body, stream=True)))
        if on_stdout is None and on_stderr is None:
            from corral.sdk.results import CommandResult

            return CommandResult.from_json(self.client.json(calls.run_command(self.id, body))).checked(check)
        live = CommandStream(self.client.events(calls.run_command(self.id, body, stream=True)))
        for chunk in live:
            chunk.hand_to(on_stdout, on_stderr)
        if live.result is None:
            raise errors.Unavailable("the command's output ended without its result")
        return live.result.checked(check)

    # --- code contexts -----------------------------------------------------------------------

    def create_code_context(self, language: str = "python", cwd: str | None = None) -> CodeContext:
        """Starts a Jupyter kernel in the sandbox (in `cwd`, relative to the workspace)."""
        from corral.sdk.results import CodeContext

        return CodeContext.from_json(self.client.json(calls.create_code_context(self.id, language, cwd)))

    def run_code(
        self, code: str, *, context: CodeContext | str | None = None, timeout: float | None = None
    ) -> Execution:
        """Runs `code` as a notebook cell in `context` (default: one made on first use, kept for
        the next calls): its output (`.logs`), rich results (`.results`: text, png, html, json...)
        and the exception it raised (`.error`; a TimeoutError when interrupted at `timeout`)."""
        if context is None:
            if self._default_context is None:
                self._default_context = self.create_code_context()
            context = self._default_context
        context_id = context if isinstance(context, str) else context.id
        from corral.sdk.results import Execution

        return Execution.from_json(self.client.json(calls.run_code(self.id, context_id, code, timeout)))

    def remove_code_context(self, context: CodeContext | str) -> None:
        """Stops the context's kernel (its variables go)."""
        context_id = context if isinstance(context, str) else context.id
        self.client.send(calls.delete_code_context(self.id, context_id))
        if self._default_context is not None and self._default_context.id == context_id:
            self._default_context = None

    # --- files -------------------------------------------------------------------------------

    @overload
    def read_file(self, path: str, *, binary: Literal[False] = False) -> str: ...

    @overload
    def read_file(self, path: str, *, binary: Literal[True]) -> bytes: ...

    def read_file(self, path: str, *, binary: bool = False) -> str | bytes:
        """A file's content (relative paths start at /workspace): text, or bytes with binary=True."""
        content = self.client.send(calls.read_file(self.id, path)).content
        return content if binary else content.decode("utf-8", "replace")

    def write_file(self, path: str, content: str | bytes) -> None:
        """Writes (creates or replaces) a file, making its parent directories."""
        self.client.send(calls.write_file(self.id, path, content.encode() if isinstance(content, str) else content))

    # --- desktop -----------------------------------------------------------------------------

    def screenshot(self, max_width: int = 0, max_height: int = 0) -> bytes:
        """The desktop as PNG bytes (downscaled to fit max_width x max_height when given)."""
        return self.client.send(calls.screenshot(self.id, max_width, max_height)).content

    def desktop(self, action: str, **fields: Any) -> dict[str, Any]:
        """Any gui action (README, "The desktop"): `sb.desktop("drag", x=1, y=2, to_x=3, to_y=4)`."""
        answer: dict[str, Any] = self.client.json(calls.desktop_action(self.id, action, **fields))
        return answer

    def click(self, x: int, y: int, button: str = "left", count: int = 1) -> None:
        self.desktop("click", x=x, y=y, button=button, count=count)

    def double_click(self, x: int, y: int) -> None:
        self.desktop("double_click", x=x, y=y)

    def move(self, x: int, y: int) -> None:
        self.desktop("move", x=x, y=y)

    def scroll(self, direction: str = "down", amount: int = 1, x: int | None = None, y: int | None = None) -> None:
        self.desktop("scroll", direction=direction, amount=amount, x=x, y=y)

    def type(self, text: str) -> None:
        self.desktop("type", text=text)

    def key(self, keys: str) -> None:
        """xdotool key names and combinations: "ctrl+s", "Return"."""
        self.desktop("key", keys=keys)

    # --- Anthropic's computer-use tools ---------------------------------------------------------

    def computer_use(
        self, tool: calls.ComputerUseTool, tool_input: Mapping[str, Any], tool_use_id: str = ""
    ) -> dict[str, Any]:
        """Carries out a tool_use block of Anthropic's `computer`, `bash` or
        `str_replace_based_edit_tool` tool (its `name` and `input`, as the model wrote them); the
        tool_result block to send back (content: text, or a base64 PNG for screenshots; is_error
        when the input could not be carried out)."""
        answer: dict[str, Any] = self.client.json(calls.computer_use(self.id, tool, tool_input, tool_use_id))
        return answer

    def computer(self, action: str, **params: Any) -> dict[str, Any]:
        """One `computer` action: `sb.computer("left_click", coordinate=[10, 20])` (coordinates in
        the scaled display of `computer_tool()`; display_width_px/_height_px to declare another)."""
        return self.computer_use("computer", {"action": action, **params})

    def bash(self, command: str | None = None, *, restart: bool = False) -> dict[str, Any]:
        """A command in the sandbox's persistent bash (cwd and variables stay), or restart it."""
        return self.computer_use("bash", {"restart": True} if restart else {"command": command})

    def text_editor(self, command: str, path: str, **params: Any) -> dict[str, Any]:
        """view (view_range), create (file_text), str_replace (old_str, new_str), insert
        (insert_line, new_str) or undo_edit, on an absolute path in the sandbox."""
        return self.computer_use("str_replace_based_edit_tool", {"command": command, "path": path, **params})

    def computer_tool(self) -> dict[str, Any]:
        """The `computer` tool definition for the Messages API, with this desktop's scaled size."""
        definition: dict[str, Any] = self.client.json(calls.computer_definition(self.id))["tool"]
        return definition

    # --- tasks -------------------------------------------------------------------------------

    def run_task(self, steps: Sequence[Mapping[str, Any]], **task: Any) -> TaskResult:
        """A task (steps as in the task format) run in this sandbox, waited for."""
        return Task.submit({"steps": list(steps), **task, "sandbox_id": self.id}, client=self.client).wait()


class Task:
    """A one-shot task (or a task in a sandbox): submit it, follow its events, wait, cancel.

        with Task.submit({"steps": [{"tool": "shell", "command": "make"}]}) as task:
            for event, data in task.events(): ...
            print(task.status().status)
    """

    # Times a dropped event stream is picked up again (from the last event seen) before giving up.
    RESUMES = 5

    def __init__(self, client: Client, task_id: str, owns_client: bool = False, events: Stream | None = None) -> None:
        self.client, self.id = client, task_id
        self._owns_client = owns_client
        self.last_sequence = 0
        # The submitting request's own answer: the task's events, until events() reads them.
        self._events = events

    @classmethod
    def submit(cls, spec: Mapping[str, Any], *, url: str | None = None, api_key: str | None = None,
               client: Client | None = None) -> Task:
        """Submits a task in the task format ({"steps": [...], "network", "env", "sandbox_id"...}).
        The same request goes on with the task's events, for events() and wait() to read (no
        second request: close() or `with` lets go of them when they are not read)."""
        own = client is None
        client = client or Client(url, api_key)
        try:
            stream = client.wire.open_stream(calls.submit_and_follow_task(spec))
            stream.set_timeout(calls.FOLLOW_SECONDS)  # submitted: now as long as a task may take
            location = stream.headers.get("Location") or ""
            content_type = (stream.headers.get("Content-Type") or "").partition(";")[0].strip().lower()
            if content_type != "text/event-stream" or not location:
                # A gateway that answers with the created task only.
                try:
                    return cls(client, str(json.loads(stream.read())["task_id"]), owns_client=own)
                finally:
                    stream.close()
        except BaseException:
            if own:
                client.close()
            raise
        return cls(client, unquote(location.rstrip("/").rpartition("/")[2]), owns_client=own, events=stream)

    @classmethod
    def connect(cls, task_id: str, *, url: str | None = None, api_key: str | None = None,
                client: Client | None = None) -> Task:
        """A task submitted earlier, by its id (NotFound when the caller's tenant has none such)."""
        task = cls(client or Client(url, api_key), task_id, owns_client=client is None)
        task.status()
        return task

    @staticmethod
    def list(*, state: str | None = None, limit: int = 50, url: str | None = None,
             api_key: str | None = None, client: Client | None = None) -> builtins.list[TaskResult]:
        """Tasks, newest first (at most `limit`), only those in `state` when given."""
        own = client is None
        client = client or Client(url, api_key)
        from corral.sdk.results import TaskResult

        found: builtins.list[TaskResult] = []
        token = ""
        try:
            while len(found) < limit:
                page = client.json(calls.list_tasks(state, min(500, limit - len(found)), token))
                found += [TaskResult.from_json(t) for t in page.get("tasks", [])]
                token = page.get("next_page_token") or ""
                if not token:
                    break
        finally:
            if own:
                client.close()
        return found[:limit]

    def __enter__(self) -> Task:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        if self._owns_client:
            self.client.close()

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Its events as (type, data), replayed from the start then live, until `finished`; a
        dropped stream is picked up again after the last event seen."""
        resumes = 0
        while True:
            try:
                if self._events is not None:  # the submitting request's answer, read once
                    stream, self._events = self._events, None
                    events = self.client.read_events(stream, last="finished")
                else:
                    events = self.client.events(calls.task_events(self.id, self.last_sequence), last="finished")
                for event, data in events:
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
                time.sleep(min(2.0, 0.2 * resumes))

    def status(self) -> TaskResult:
        from corral.sdk.results import TaskResult

        return TaskResult.from_json(self.client.json(calls.get_task(self.id)))

    def wait(self, on_event: Callable[[str, dict[str, Any]], None] | None = None) -> TaskResult:
        """Follows it to its end (handing each event to `on_event`); its final status."""
        for event, data in self.events():
            if on_event is not None:
                on_event(event, data)
        return self.status()

    def cancel(self) -> TaskResult:
        """Cancels it (its current step stops at once); FailedPrecondition when it has ended."""
        from corral.sdk.results import TaskResult

        return TaskResult.from_json(self.client.json(calls.cancel_task(self.id)))


def run_task(
    steps: Sequence[Mapping[str, Any]],
    *,
    url: str | None = None,
    api_key: str | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    **task: Any,
) -> TaskResult:
    """Submits a one-shot task (its own fresh sandbox), follows it, returns its final status.
    `task` takes the task format's other fields (network, env, limits, step_timeout...)."""
    with Task.submit({"steps": list(steps), **task}, url=url, api_key=api_key) as submitted:
        return submitted.wait(on_event)
