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

# Imported at the start of every sandbox (the agent's startup is on each task's path): nothing
# here may pull in typing, dataclasses or json's regular expressions (together ~40 ms of CPU).
# Messages are declared like keyword-only dataclasses; Message builds them from their
# annotations (dataclass_transform tells type checkers so), and lines are (de)coded with the
# json package's own C scanner and encoder.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, ClassVar, Generic, Literal, TypeVar, dataclass_transform

    M = TypeVar("M", bound="Message")
    R = TypeVar("R", bound="Reply")
    StreamName = Literal["stdout", "stderr"]
    RunKind = Literal["shell", "python", "typescript", "argv"]
    EntryType = Literal["file", "directory", "symlink", "other"]
else:
    # The same names at run time: a Literal is its tuple of values, the rest is inert.
    StreamName = ("stdout", "stderr")
    RunKind = ("shell", "python", "typescript", "argv")
    EntryType = ("file", "directory", "symlink", "other")
    M = R = None

    def dataclass_transform(**_: object) -> Callable[[type], type]:
        return lambda cls: cls

    class Generic:
        def __class_getitem__(cls, _: object) -> type:
            return _Generic

    class _Generic:
        def __class_getitem__(cls, _: object) -> type:
            return cls

# Version 1 was the unversioned protocol (a run sent both `command` and `code`); 3 added list_files;
# 4 the sandbox calls' operations (stdin, signal, bytes, stat, mkdir, remove, rename);
# 5 the same messages, from a module the agent imports in a millisecond.
PROTOCOL_VERSION = 5
# The most one read_bytes / write_bytes chunk carries (before base64): files of any size move
# as a sequence of chunks, so no line (and no copy on either side) holds a whole large file.
MAX_CHUNK_BYTES = 1 * 1024 * 1024

# The agent's command line in a sandbox (bubblewrap, and the docker image's CMD): the agent.py
# it names imported as a module, not run as a script, so that Python loads its bytecode from
# /app/__pycache__ instead of compiling 1,000 lines at every start (15 ms); -S: no site.
AGENT_BOOT = "import sys; sys.path.insert(0, sys.argv[1].rpartition('/')[0]); import agent; agent.main()"
AGENT_COMMAND = ["/usr/bin/python3", "-I", "-S", "-c", AGENT_BOOT, "/app/agent.py"]
# The compiled agent (sandbox/agent/*.c, built by scripts/build-agent next to agent.py): the same
# protocol, the hot path (run, kill, stdin, signal, chdir) served in C, everything else handed
# to the Python agent its argument names, which it starts on first need. The docker image's CMD.
COMPILED_AGENT_NAME = "corral-agent"
COMPILED_AGENT_COMMAND = [f"/app/{COMPILED_AGENT_NAME}", "/app/agent.py"]

MIB = 1024 * 1024
# The longest line either side accepts: replies carry whole files, so this stays above the
# largest file read (a longer line means the stream cannot be trusted any more).
MAX_LINE_BYTES = 64 * MIB
DEFAULT_MAX_FILE_BYTES = 10 * MIB


class ProtocolError(ValueError):
    """A line that is not a valid message; `request_id` is its id when it had a usable one."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class _Factory:
    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], Any]) -> Any:
    """A field whose default is made anew for each message (a list, a dict, a message)."""
    return _Factory(default_factory)


_REQUIRED = object()


@dataclass_transform(kw_only_default=True, field_specifiers=(field,))
class Message:
    """A JSON object with typed fields, declared as annotated class attributes (keyword-only,
    the default after `=`, `field(default_factory=...)` for a mutable one)."""

    # (name, annotation as written, default, or _REQUIRED / a _Factory) of every wire field.
    _fields: ClassVar[tuple[tuple[str, str, Any], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = {name: (hint, default) for name, hint, default in cls._fields}
        # The class's own annotations, strings (from __future__); inspect would cost its import.
        for name, hint in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
            if not hint.startswith("ClassVar"):
                declared[name] = (hint, cls.__dict__.get(name, _REQUIRED))
        cls._fields = tuple((name, hint, default) for name, (hint, default) in declared.items())

    def __init__(self, **values: Any) -> None:
        for name, _, default in self._fields:
            if name in values:
                value = values.pop(name)
            elif default is _REQUIRED:
                raise TypeError(f"{type(self).__name__}() is missing the field {name!r}")
            else:
                value = default.make() if isinstance(default, _Factory) else default
            setattr(self, name, value)
        if values:
            raise TypeError(f"{type(self).__name__}() has no field {next(iter(values))!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name, _, _ in self._fields)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name, _, _ in self._fields)
        return f"{type(self).__name__}({shown})"

    def to_json(self) -> dict[str, Any]:
        return {name: _dump(getattr(self, name)) for name, _, _ in self._fields}

    @classmethod
    def from_json(cls: type[M], data: Mapping[str, Any]) -> M:
        if not isinstance(data, dict):
            raise ProtocolError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        values: dict[str, Any] = {}
        for name, check, required in _checks_of(cls):
            if name in data:
                values[name] = check(data[name], f"{cls.__name__}.{name}")
            elif required:
                raise ProtocolError(f"{cls.__name__}: the field {name!r} is missing")
        return cls(**values)


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


class ReadyReply(Reply):
    """The agent's first line. `protocol` is None from an agent older than versioning."""

    TYPE: ClassVar[str] = "ready"
    pid: int = 0
    protocol: int | None = None


class OutputReply(Reply):
    TYPE: ClassVar[str] = "output"
    stream: StreamName
    data: str


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


class FileReply(Reply):
    """A file read (with its content) or written (content empty); `path` as the agent sees it."""

    TYPE: ClassVar[str] = "file"
    path: str
    size: int
    content: str = ""


class ErrorReply(Reply):
    """A request refused or failed; the message is for the user."""

    TYPE: ClassVar[str] = "error"
    error: str
    # The path asked for does not exist (the executor answers NotFound, the gateway 404).
    missing: bool = False


class ChdirReply(Reply):
    TYPE: ClassVar[str] = "chdir"
    path: str


class FileEntry(Message):
    """One directory entry, as lstat sees it (a symlink is reported, never followed)."""

    name: str
    type: EntryType
    size: int
    # Seconds since the epoch.
    mtime: float


class ListFilesReply(Reply):
    """A directory's entries, sorted by name; `truncated` when there were more than asked for."""

    TYPE: ClassVar[str] = "files"
    path: str
    entries: list[FileEntry] = field(default_factory=list)
    truncated: bool = False


class DoneReply(Reply):
    """An operation carried out; `path` the one it acted on (as the agent sees it), if any."""

    TYPE: ClassVar[str] = "done"
    path: str = ""


class BytesReply(Reply):
    """A chunk of a file: `data` base64, from the request's offset; `size` the whole file's."""

    TYPE: ClassVar[str] = "bytes"
    path: str
    data: str
    size: int
    eof: bool


class StatReply(Reply):
    TYPE: ClassVar[str] = "stat"
    path: str
    entry: FileEntry


# --- requests ------------------------------------------------------------------------------


class ProcessLimits(Message):
    """Per-process rlimits the agent sets on a run's process; 0 is none."""

    memory_mb: int = 0
    max_processes: int = 0
    max_file_size_mb: int = 0


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


class KillRequest(Request[ExitReply]):
    """Stops run `target` and its whole process tree; its ExitReply says `killed`."""

    OP: ClassVar[str] = "kill"
    target: int


class ReadFileRequest(Request[FileReply]):
    OP: ClassVar[str] = "read_file"
    REPLY: ClassVar[type[Reply] | None] = FileReply
    path: str
    max_bytes: int = DEFAULT_MAX_FILE_BYTES
    cwd: str = ""
    # Other directories an absolute path may be in (see agent.resolve_path).
    roots: list[str] = field(default_factory=list)


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


class ChdirRequest(Request[ChdirReply]):
    """A warm sandbox handed its task: the agent moves into `path` and adds `env` to its own
    environment (steps get theirs with each run)."""

    OP: ClassVar[str] = "chdir"
    REPLY: ClassVar[type[Reply] | None] = ChdirReply
    path: str
    env: dict[str, str] = field(default_factory=dict)


class ListFilesRequest(Request[ListFilesReply]):
    """Lists a directory inside the task directory (`cwd` if set), confined like read_file."""

    OP: ClassVar[str] = "list_files"
    REPLY: ClassVar[type[Reply] | None] = ListFilesReply
    path: str
    max_entries: int = 10_000
    cwd: str = ""
    # Other directories an absolute path may be in (see agent.resolve_path).
    roots: list[str] = field(default_factory=list)


class StdinRequest(Request[DoneReply]):
    """Bytes (base64) for the stdin of run `target`, queued; `close` closes it after them."""

    OP: ClassVar[str] = "stdin"
    REPLY: ClassVar[type[Reply] | None] = DoneReply
    target: int
    data: str = ""
    close: bool = False


class SignalRequest(Request[DoneReply]):
    """Sends `signal` (a number) to run `target`'s process group."""

    OP: ClassVar[str] = "signal"
    REPLY: ClassVar[type[Reply] | None] = DoneReply
    target: int
    signal: int


class _PathRequest(Request[R]):
    path: str
    cwd: str = ""
    # Other directories an absolute path may be in (see agent.resolve_path).
    roots: list[str] = field(default_factory=list)


class ReadBytesRequest(_PathRequest[BytesReply]):
    OP: ClassVar[str] = "read_bytes"
    REPLY: ClassVar[type[Reply] | None] = BytesReply
    offset: int = 0
    length: int = MAX_CHUNK_BYTES


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


class StatRequest(_PathRequest[StatReply]):
    OP: ClassVar[str] = "stat"
    REPLY: ClassVar[type[Reply] | None] = StatReply


class MkdirRequest(_PathRequest[DoneReply]):
    OP: ClassVar[str] = "mkdir"
    REPLY: ClassVar[type[Reply] | None] = DoneReply


class RemoveRequest(_PathRequest[DoneReply]):
    """Removes a file, a link (never what it points to) or a directory with its contents."""

    OP: ClassVar[str] = "remove"
    REPLY: ClassVar[type[Reply] | None] = DoneReply


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
            head, _, tail = _dumps(fields).partition('"data": ""')
            return b"".join((head.encode(), b'"data": "', data.encode("ascii"), b'"', tail.encode(), b"\n"))
    return _dumps(fields).encode() + b"\n"


def parse_line(line: bytes | str) -> dict[str, Any]:
    """A line's JSON object; ProtocolError when it is not one."""
    try:
        data = _loads(line)
    except ValueError:
        raise ProtocolError("not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("not a JSON object")
    return data


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _ScannerContext:
    """What json's C scanner reads its settings from: json.loads's defaults."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name.replace("Infinity", "inf"))


try:
    # json's own C encoder and scanner, as json.dumps / json.loads build them, without json's
    # pure-Python layer (whose import compiles regular expressions).
    from _json import encode_basestring_ascii, make_encoder, make_scanner

    _encode_object = make_encoder(None, _not_serializable, encode_basestring_ascii, None, ": ", ", ", False, False, True)
    _scan = make_scanner(_ScannerContext())  # type: ignore[arg-type]  # it reads these attributes only

    def _dumps(value: Any) -> str:
        return "".join(_encode_object(value, 0))

    def _loads(line: bytes | str) -> Any:
        text = (line.decode() if isinstance(line, bytes | bytearray) else line).strip(" \t\n\r")
        try:
            value, end = _scan(text, 0)
        except StopIteration:
            raise ValueError("not JSON") from None
        if end != len(text):
            raise ValueError("extra data after the JSON value")
        return value

except (ImportError, TypeError):  # an interpreter without them, or with other signatures
    import json

    def _dumps(value: Any) -> str:
        return json.dumps(value)

    def _loads(line: bytes | str) -> Any:
        return json.loads(line)


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

_CHECKS: dict[type[Any], list[tuple[str, Callable[[Any, str], Any], bool]]] = {}


def _checks_of(cls: type[Any]) -> list[tuple[str, Callable[[Any, str], Any], bool]]:
    """(name, check, required) of a message class's wire fields, worked out once per class."""
    known = _CHECKS.get(cls)
    if known is None:
        known = [(name, _check_for(hint), default is _REQUIRED) for name, hint, default in cls._fields]
        _CHECKS[cls] = known
    return known


def _split_top(text: str, separator: str) -> list[str]:
    """`text` split at each `separator` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "[") - (char == "]")
        if char == separator and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return [*parts, text[start:].strip()]


def _check_for(hint: str) -> Callable[[Any, str], Any]:
    """The check of a field annotated `hint` (as written: the module's annotations are strings).
    The annotations this module uses, and no others: int, float, bool, str, Any, X | None,
    list[X], dict[str, X], a Literal alias (StreamName...) and a Message class."""
    options = _split_top(hint, "|")
    if len(options) > 1:
        nullable = "None" in options
        checks = [_check_for(option) for option in options if option != "None"]

        def union(value: Any, where: str) -> Any:
            if value is None and nullable:
                return None
            for check in checks:
                try:
                    return check(value, where)
                except ProtocolError:
                    continue
            raise ProtocolError(f"{where}: {value!r} is not a {hint}")

        return union
    outer, _, inner = hint.partition("[")
    if outer == "list":
        item = _check_for(inner[:-1])

        def of_list(value: Any, where: str) -> Any:
            if not isinstance(value, list):
                raise ProtocolError(f"{where}: expected a list")
            return [item(v, f"{where}[]") for v in value]

        return of_list
    if outer == "dict":
        entry = _check_for(_split_top(inner[:-1], ",")[1])

        def of_dict(value: Any, where: str) -> Any:
            if not isinstance(value, dict):
                raise ProtocolError(f"{where}: expected an object")
            for key in value:
                if not isinstance(key, str):
                    raise ProtocolError(f"{where}: keys must be strings")
            return {k: entry(v, f"{where}.{k}") for k, v in value.items()}

        return of_dict
    if hint in _SCALARS:
        return _SCALARS[hint]
    named = globals().get(hint)
    if isinstance(named, tuple):  # a Literal alias: its values
        def one_of(value: Any, where: str) -> Any:
            if value not in named:
                raise ProtocolError(f"{where}: {value!r} is not one of {named}")
            return value

        return one_of
    if isinstance(named, type) and issubclass(named, Message):
        return lambda value, where: named.from_json(value)
    raise TypeError(f"no check for the field type {hint!r}")  # a field type this module lacks


def _check_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{where}: expected true or false")
    return value


def _check_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{where}: expected an integer")
    return value


def _check_float(value: Any, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ProtocolError(f"{where}: expected a number")
    return float(value)


def _check_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: expected a string")
    return value


_SCALARS: dict[str, Callable[[Any, str], Any]] = {
    "Any": lambda value, where: value,
    "bool": _check_bool,
    "int": _check_int,
    "float": _check_float,
    "str": _check_str,
}


def _dump(value: Any) -> Any:
    if isinstance(value, Message):
        return value.to_json()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value
