"""The protocol between the executor and the in-sandbox step agent: every message, typed, once.

Both sides import this one module. It is standard library only and must stay so: the agent runs
it on the sandbox's system Python (`/usr/bin/python3 -I /app/agent.py` loads it from its own
directory, /app), the executor imports it as `corral.agent_protocol` (the same file: see
corral/agent_protocol.py). Nothing outside it spells a message's field by name.

Wire format: one JSON object per line (UTF-8), requests on the agent's stdin, replies on its
stdout. A request carries `op` (its kind) and `id`; a reply carries `type` and the `id` of the
request it answers (`ready` answers none). The first line the agent sends is `ready`, carrying
PROTOCOL_VERSION; the executor refuses an agent speaking another version (or none).

    run        RunRequest        -> OutputReply* then ExitReply
    kill       KillRequest       -> nothing (the run it names ends with its ExitReply, killed)
    read_file  ReadFileRequest   -> FileReply | ErrorReply
    write_file WriteFileRequest  -> FileReply | ErrorReply
    chdir      ChdirRequest      -> ChdirReply | ErrorReply
    list_files ListFilesRequest  -> ListFilesReply | ErrorReply
    stdin      StdinRequest      -> DoneReply | ErrorReply  (a run started with stdin: true)
    signal     SignalRequest     -> DoneReply | ErrorReply
    read_bytes ReadBytesRequest  -> BytesReply | ErrorReply (one chunk, base64)
    write_bytes WriteBytesRequest -> FileReply | ErrorReply (one chunk, base64)
    stat       StatRequest       -> StatReply | ErrorReply
    mkdir      MkdirRequest      -> DoneReply | ErrorReply
    remove     RemoveRequest     -> DoneReply | ErrorReply
    rename     RenameRequest     -> DoneReply | ErrorReply

Adding an operation touches three places and no transport; `list_files` is the worked
example (protocol 3):
  1. here, one request and one reply type (ListFilesRequest, ListFilesReply with FileEntry),
     and PROTOCOL_VERSION bumped;
  2. in sandbox/runtime/agent.py, one handler, `@handles(protocol.ListFilesRequest)`, confining
     the path with resolve_path like every other file op;
  3. in services/executor/drivers/agent_sandbox.py, one method on AgentSandbox (and its
     abstract twin on base.Sandbox) that sends the request and maps the reply.

Decoding (from_json) checks every field against its annotation, nested messages included, and
ignores fields it does not know; a wrong type is a ProtocolError.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

# Version 1 was the unversioned protocol (a run sent both `command` and `code`); 3 added list_files;
# 4 the sandbox calls' operations (stdin, signal, bytes, stat, mkdir, remove, rename).
PROTOCOL_VERSION = 4
# The most one read_bytes / write_bytes chunk carries (before base64): files of any size move
# as a sequence of chunks, so no line (and no copy on either side) holds a whole large file.
MAX_CHUNK_BYTES = 1 * 1024 * 1024

MIB = 1024 * 1024
# The longest line either side accepts: replies carry whole files, so this stays above the
# largest file read (a longer line means the stream cannot be trusted any more).
MAX_LINE_BYTES = 64 * MIB
DEFAULT_MAX_FILE_BYTES = 10 * MIB

StreamName = Literal["stdout", "stderr"]
RunKind = Literal["shell", "python", "typescript", "argv"]


class ProtocolError(ValueError):
    """A line that is not a valid message; `request_id` is its id when it had a usable one."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


M = TypeVar("M", bound="Message")


@dataclass(kw_only=True)
class Message:
    """A JSON object with typed fields."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: _dump(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls: type[M], data: Mapping[str, Any]) -> M:
        if not isinstance(data, Mapping):
            raise ProtocolError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        values: dict[str, Any] = {}
        for name, hint, required in _fields_of(cls):
            if name in data:
                values[name] = _check(data[name], hint, f"{cls.__name__}.{name}")
            elif required:
                raise ProtocolError(f"{cls.__name__}: the field {name!r} is missing")
        return cls(**values)


@dataclass(kw_only=True)
class Reply(Message):
    """A line from the agent. TYPE is its `type` on the wire."""

    TYPE: ClassVar[str] = ""
    id: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE:
            REPLIES[cls.TYPE] = cls

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, **super().to_json()}


R = TypeVar("R", bound=Reply)


@dataclass(kw_only=True)
class Request(Message, Generic[R]):
    """A line to the agent. OP is its `op` on the wire; REPLY the reply it is answered with
    (R, for type checkers), None when the agent answers nothing."""

    OP: ClassVar[str] = ""
    REPLY: ClassVar[type[Reply] | None] = None
    id: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.OP:
            REQUESTS[cls.OP] = cls

    def to_json(self) -> dict[str, Any]:
        return {"op": self.OP, **super().to_json()}


REQUESTS: dict[str, type[Request[Any]]] = {}
REPLIES: dict[str, type[Reply]] = {}


# --- replies -------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ReadyReply(Reply):
    """The agent's first line. `protocol` is None from an agent older than versioning."""

    TYPE: ClassVar[str] = "ready"
    pid: int = 0
    protocol: int | None = None


@dataclass(kw_only=True)
class OutputReply(Reply):
    TYPE: ClassVar[str] = "output"
    stream: StreamName
    data: str


@dataclass(kw_only=True)
class ExitReply(Reply):
    """How a run ended. `limit_events`: the sandbox cgroup's counters that grew during the run
    (oom_kill, pids_max), where the agent can see a cgroup of its own (containers)."""

    TYPE: ClassVar[str] = "exit"
    # None when killed by a signal (see `signal`) or never started (see `error`).
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    killed: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    error: str = ""
    limit_events: dict[str, int] = field(default_factory=dict)


@dataclass(kw_only=True)
class FileReply(Reply):
    """A file read (with its content) or written (content empty); `path` as the agent sees it."""

    TYPE: ClassVar[str] = "file"
    path: str
    size: int
    content: str = ""


@dataclass(kw_only=True)
class ErrorReply(Reply):
    """A request refused or failed; the message is for the user."""

    TYPE: ClassVar[str] = "error"
    error: str
    # The path asked for does not exist (the executor answers NotFound, the gateway 404).
    missing: bool = False


@dataclass(kw_only=True)
class ChdirReply(Reply):
    TYPE: ClassVar[str] = "chdir"
    path: str


@dataclass(kw_only=True)
class FileEntry(Message):
    """One directory entry, as lstat sees it (a symlink is reported, never followed)."""

    name: str
    type: Literal["file", "directory", "symlink", "other"]
    size: int
    # Seconds since the epoch.
    mtime: float


@dataclass(kw_only=True)
class ListFilesReply(Reply):
    """A directory's entries, sorted by name; `truncated` when there were more than asked for."""

    TYPE: ClassVar[str] = "files"
    path: str
    entries: list[FileEntry] = field(default_factory=list)
    truncated: bool = False


@dataclass(kw_only=True)
class DoneReply(Reply):
    """An operation carried out; `path` the one it acted on (as the agent sees it), if any."""

    TYPE: ClassVar[str] = "done"
    path: str = ""


@dataclass(kw_only=True)
class BytesReply(Reply):
    """A chunk of a file: `data` base64, from the request's offset; `size` the whole file's."""

    TYPE: ClassVar[str] = "bytes"
    path: str
    data: str
    size: int
    eof: bool


@dataclass(kw_only=True)
class StatReply(Reply):
    TYPE: ClassVar[str] = "stat"
    path: str
    entry: FileEntry


# --- requests ------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ProcessLimits(Message):
    """Per-process rlimits the agent sets on a run's process; 0 is none."""

    memory_mb: int = 0
    max_processes: int = 0
    max_file_size_mb: int = 0


@dataclass(kw_only=True)
class RunRequest(Request[ExitReply]):
    """Runs one process: `code` is the shell command or the Python / TypeScript source for those
    kinds, `argv` the command line for kind "argv". `cwd`: a directory to run in instead of the
    agent's own (long-lived sandboxes hold one directory per task)."""

    OP: ClassVar[str] = "run"
    REPLY: ClassVar[type[Reply] | None] = ExitReply
    kind: RunKind
    code: str = ""
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    timeout: float = 60.0
    max_output_bytes: int = MIB
    limits: ProcessLimits = field(default_factory=ProcessLimits)
    # Keep the process's stdin open for StdinRequests (else it reads /dev/null).
    stdin: bool = False


@dataclass(kw_only=True)
class KillRequest(Request[ExitReply]):
    """Stops run `target` and its whole process tree; its ExitReply says `killed`."""

    OP: ClassVar[str] = "kill"
    target: int


@dataclass(kw_only=True)
class ReadFileRequest(Request[FileReply]):
    OP: ClassVar[str] = "read_file"
    REPLY: ClassVar[type[Reply] | None] = FileReply
    path: str
    max_bytes: int = DEFAULT_MAX_FILE_BYTES
    cwd: str = ""
    # Other directories an absolute path may be in (see agent.resolve_path).
    roots: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class WriteFileRequest(Request[FileReply]):
    """Writes a file, creating its parent directories."""

    OP: ClassVar[str] = "write_file"
    REPLY: ClassVar[type[Reply] | None] = FileReply
    path: str
    content: str
    max_bytes: int = DEFAULT_MAX_FILE_BYTES
    cwd: str = ""
    # Other directories an absolute path may be in (see agent.resolve_path).
    roots: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class ChdirRequest(Request[ChdirReply]):
    """A warm sandbox handed its task: the agent moves into `path` and adds `env` to its own
    environment (steps get theirs with each run)."""

    OP: ClassVar[str] = "chdir"
    REPLY: ClassVar[type[Reply] | None] = ChdirReply
    path: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(kw_only=True)
class ListFilesRequest(Request[ListFilesReply]):
    """Lists a directory inside the task directory (`cwd` if set), confined like read_file."""

    OP: ClassVar[str] = "list_files"
    REPLY: ClassVar[type[Reply] | None] = ListFilesReply
    path: str
    max_entries: int = 10_000
    cwd: str = ""
    # Other directories an absolute path may be in (see agent.resolve_path).
    roots: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class StdinRequest(Request[DoneReply]):
    """Bytes (base64) for the stdin of run `target`, queued; `close` closes it after them."""

    OP: ClassVar[str] = "stdin"
    REPLY: ClassVar[type[Reply] | None] = DoneReply
    target: int
    data: str = ""
    close: bool = False


@dataclass(kw_only=True)
class SignalRequest(Request[DoneReply]):
    """Sends `signal` (a number) to run `target`'s process group."""

    OP: ClassVar[str] = "signal"
    REPLY: ClassVar[type[Reply] | None] = DoneReply
    target: int
    signal: int


@dataclass(kw_only=True)
class _PathRequest(Request[R]):
    path: str
    cwd: str = ""
    # Other directories an absolute path may be in (see agent.resolve_path).
    roots: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class ReadBytesRequest(_PathRequest[BytesReply]):
    OP: ClassVar[str] = "read_bytes"
    REPLY: ClassVar[type[Reply] | None] = BytesReply
    offset: int = 0
    length: int = MAX_CHUNK_BYTES


@dataclass(kw_only=True)
class WriteBytesRequest(_PathRequest[FileReply]):
    """Writes a chunk (base64) at the end of the file (`append`) or as its new content,
    creating parent directories; `max_bytes` bounds the file's size after the write."""

    OP: ClassVar[str] = "write_bytes"
    REPLY: ClassVar[type[Reply] | None] = FileReply
    data: str
    append: bool = False
    max_bytes: int = DEFAULT_MAX_FILE_BYTES
    # The file this one becomes (confined like `path`, checked with every chunk): with
    # `commit`, `path` is renamed to it after the write (a whole file appears at once).
    rename_to: str = ""
    commit: bool = False


@dataclass(kw_only=True)
class StatRequest(_PathRequest[StatReply]):
    OP: ClassVar[str] = "stat"
    REPLY: ClassVar[type[Reply] | None] = StatReply


@dataclass(kw_only=True)
class MkdirRequest(_PathRequest[DoneReply]):
    OP: ClassVar[str] = "mkdir"
    REPLY: ClassVar[type[Reply] | None] = DoneReply


@dataclass(kw_only=True)
class RemoveRequest(_PathRequest[DoneReply]):
    """Removes a file, a link (never what it points to) or a directory with its contents."""

    OP: ClassVar[str] = "remove"
    REPLY: ClassVar[type[Reply] | None] = DoneReply


@dataclass(kw_only=True)
class RenameRequest(_PathRequest[DoneReply]):
    """Renames `path` to `target` (both confined), replacing a file there."""

    OP: ClassVar[str] = "rename"
    REPLY: ClassVar[type[Reply] | None] = DoneReply
    target: str


# --- encoding ------------------------------------------------------------------------------


# Above this, a base64 `data` field is put into the line as it is (json.dumps would scan it for
# characters to escape, and base64 has none: 11 ms per MiB, the most of a chunk's cost).
SPLICE_BYTES = 16 * 1024


def encode(message: Message) -> bytes:
    """One message as its line, newline included."""
    fields = message.to_json()
    data = fields.get("data")
    if isinstance(message, BytesReply | WriteBytesRequest | StdinRequest) and isinstance(data, str) and len(data) > SPLICE_BYTES:
        if data.isascii() and '"' not in data and "\\" not in data:
            fields["data"] = ""
            # The key is unique, and no string value holds an unescaped quote: this is the field.
            head, _, tail = json.dumps(fields).partition('"data": ""')
            return b"".join((head.encode(), b'"data": "', data.encode("ascii"), b'"', tail.encode(), b"\n"))
    return json.dumps(fields).encode() + b"\n"


def parse_line(line: bytes | str) -> dict[str, Any]:
    """A line's JSON object; ProtocolError when it is not one."""
    try:
        data = json.loads(line)
    except ValueError:
        raise ProtocolError("not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("not a JSON object")
    return data


def decode_request(data: Mapping[str, Any]) -> Request[Any]:
    request_id = data.get("id")
    usable_id = request_id if isinstance(request_id, int) and not isinstance(request_id, bool) else None
    kind = REQUESTS.get(str(data.get("op")))
    if kind is None:
        raise ProtocolError(f"unknown op {data.get('op')!r}", usable_id)
    try:
        return kind.from_json(data)
    except ProtocolError as exc:
        raise ProtocolError(str(exc), usable_id) from None


def decode_reply(data: Mapping[str, Any]) -> Reply:
    kind = REPLIES.get(str(data.get("type")))
    if kind is None:
        raise ProtocolError(f"unknown reply type {data.get('type')!r}")
    return kind.from_json(data)


def version_mismatch(ready: Mapping[str, Any]) -> str:
    """Why an agent's ready message (the raw object) cannot be spoken to, or "" when it can."""
    version = ready.get("protocol")
    if version == PROTOCOL_VERSION and not isinstance(version, bool):
        return ""
    spoken = f"protocol {version}" if version is not None else "an unversioned protocol (1)"
    return (
        f"the sandbox agent speaks {spoken}, this executor {PROTOCOL_VERSION}: rebuild the "
        "sandbox image (scripts/build-images) so that its /app/agent.py and agent_protocol.py "
        "are the executor's (under bubblewrap, CORRAL_RUNTIME_DIR must be the executor's own "
        "sandbox/runtime)"
    )


# --- field checks --------------------------------------------------------------------------

_FIELDS: dict[type[Any], list[tuple[str, Any, bool]]] = {}


def _fields_of(cls: type[Any]) -> list[tuple[str, Any, bool]]:
    """(name, type, required) of a message class's wire fields, worked out once per class."""
    known = _FIELDS.get(cls)
    if known is None:
        hints = typing.get_type_hints(cls)
        known = [
            (f.name, hints[f.name], f.default is MISSING and f.default_factory is MISSING)
            for f in fields(cls)
        ]
        _FIELDS[cls] = known
    return known


def _check(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ProtocolError(f"{where}: {value!r} is not one of {typing.get_args(hint)}")
        return value
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in typing.get_args(hint):
            return None
        for option in typing.get_args(hint):
            if option is type(None):
                continue
            try:
                return _check(value, option, where)
            except ProtocolError:
                continue
        raise ProtocolError(f"{where}: {value!r} is not a {hint}")
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: expected a list")
        (item,) = typing.get_args(hint)
        return [_check(v, item, f"{where}[]") for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected an object")
        _, item = typing.get_args(hint)
        for key in value:
            if not isinstance(key, str):
                raise ProtocolError(f"{where}: keys must be strings")
        return {k: _check(v, item, f"{where}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and is_dataclass(hint) and issubclass(hint, Message):
        return hint.from_json(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"{where}: expected true or false")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"{where}: expected an integer")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ProtocolError(f"{where}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ProtocolError(f"{where}: expected a string")
        return value
    raise ProtocolError(f"{where}: no check for {hint!r}")  # a field type this module lacks


def _dump(value: Any) -> Any:
    if isinstance(value, Message):
        return value.to_json()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value
