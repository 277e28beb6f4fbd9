"""The in-sandbox step agent: runs steps for the executor, speaking the agent protocol.

It is started once per sandbox (as the sandbox's command, protocol.AGENT_COMMAND: this module
imported from /app by `/usr/bin/python3 -I -S -c ...`, so that its bytecode is used)
and lives as long as the task, so what a step leaves running in the background stays there for
later steps. Standard library only: it runs on the sandbox's system Python, not Corral's
virtualenv. Every message it reads and writes is a type of agent_protocol.py, loaded from this
file's own directory; the executor imports the same module. One JSON line per message:
requests on stdin, replies on stdout.

It starts on every task's path, so it imports only modules written in C (and its protocol):
`threading`, `signal`, `ctypes`, `subprocess` or `selectors` would each cost more CPU than the
whole agent does without them. What only some requests need (ctypes for openat2, subprocess for
per-process rlimits, shutil, queue) is imported by them, on first use.

Each request kind has one handler here: `run` and `kill` are served by StepRun threads, every
other op by the function registered for its request type with @handles.
"""

from __future__ import annotations

import _thread  # threading without its Python layer
import binascii
import codecs
import errno
import fcntl
import os
import resource
import select
import stat
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # the same names, typed
    from collections.abc import Callable, Sequence
    from typing import Any, Literal, TypeVar
else:
    import _signal  # signal without its enums

# Under -I neither a script's directory nor the current one is on sys.path.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
import agent_protocol as protocol  # noqa: E402  (found through the line above)

MIB = 1024 * 1024
# After a step's main process exits, background children may keep its pipes open: read what
# is already there for this long, then discard the rest in the background.
DRAIN_SECONDS = 0.2
READ_CHUNK = 64 * 1024
# Stdin bytes queued for one run and not yet read by its process.
MAX_STDIN_QUEUED = 4 * MIB
PYTHON = "/usr/bin/python3"
NODE = "/usr/bin/node"
TS_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ts-run.js")
# Where python / typescript steps' code is written. Overridable for the executor's unisolated
# test transport (drivers/local.py), whose agents share the host's /tmp.
SCRIPT_DIR = os.environ.get("CORRAL_AGENT_SCRIPT_DIR", "/tmp/.corral")
# Counters of the sandbox's own cgroup (visible inside a container; absent under bubblewrap):
# how often the kernel OOM-killed a process, and how often a fork hit the pids limit.
# (cgroup v2 path, cgroup v1 path) for each.
CGROUP_COUNTERS = {
    "oom_kill": (("/sys/fs/cgroup/memory.events", "oom_kill"), ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill")),
    "pids_max": (("/sys/fs/cgroup/pids.events", "max"), ("/sys/fs/cgroup/pids/pids.events", "max")),
}

_write_lock = _thread.allocate_lock()
_out = sys.stdout.buffer


def send(message: protocol.Reply) -> None:
    line = protocol.encode(message)
    with _write_lock:
        _out.write(line)
        _out.flush()


class Refused(Exception):
    """A request the agent will not carry out; the message is shown to the user. `missing`:
    because the path it names does not exist."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


# --- files ---------------------------------------------------------------------------------


def task_root() -> str:
    return os.path.realpath(os.getcwd())


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def resolve_path(path: str, cwd: str = "", roots: Sequence[str] = ()) -> tuple[str, str]:
    """Resolves `path` inside the task directory (`cwd` if set, where a relative path starts),
    or inside one of `roots` for an absolute path (a long-lived sandbox's workspace, /tmp and
    the task's own directory), refusing anything that leads out of it.

    Returns the root and the resolved path. This gives the refusal its words; the file is then
    opened with open_beneath, which holds even when a link or rename races the check."""
    root = root_of(cwd)
    if not path or "\x00" in path:
        raise Refused("the path is empty or contains a NUL byte")
    if os.path.isabs(path):
        normalized = os.path.normpath(path)
        allowed = [root, *(os.path.realpath(r) for r in roots)]
        root = next((r for r in allowed if _inside(normalized, r)), "")
        if not root:
            raise Refused(f"refused path {path!r}: absolute paths must be inside {' or '.join(allowed)}")
        relative = os.path.relpath(normalized, root)
        parts = path.split("/")
    else:
        relative = path
        parts = path.split("/")
    if ".." in parts:
        raise Refused(f"refused path {path!r}: '..' is not allowed; paths stay inside {root}")
    full = os.path.normpath(os.path.join(root, relative))
    try:
        real = os.path.realpath(full)
    except OSError as exc:  # a component changed type while it was being resolved
        raise Refused(f"refused path {path!r}: it changed while being resolved ({exc.strerror})") from None
    if not _inside(real, root):
        raise Refused(f"refused path {path!r}: it is a symlink leading outside {root}")
    return root, real


# openat2(2): resolve a path without ever leaving the directory it starts from, atomically, so
# no symlink or rename racing us can take a file operation out of the task directory.
SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08


_openat2_call: Callable[[int, str, int, int, int], tuple[int, int]] | None = None


def _openat2(dir_fd: int, relative: str, flags: int, mode: int, resolve: int) -> tuple[int, int]:
    """openat2(2): (fd or -1, errno). Through ctypes, imported on the first file operation."""
    global _openat2_call
    if _openat2_call is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long

        class OpenHow(ctypes.Structure):
            _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

        def call(dir_fd: int, relative: str, flags: int, mode: int, resolve: int) -> tuple[int, int]:
            how = OpenHow(flags, mode, resolve)
            fd = int(libc.syscall(SYS_OPENAT2, dir_fd, relative.encode(), ctypes.byref(how), ctypes.sizeof(how)))
            return fd, ctypes.get_errno()

        _openat2_call = call
    return _openat2_call(dir_fd, relative, flags, mode, resolve)


def openat_beneath(dir_fd: int, relative: str, flags: int, mode: int = 0o644) -> int:
    """Opens `relative` below the directory `dir_fd`, never outside it (OSError otherwise:
    EXDEV for an escape). Where the kernel has no openat2, one component at a time, each with
    O_NOFOLLOW (stricter: no symlink at all is followed)."""
    flags |= os.O_CLOEXEC
    fd, err = _openat2(dir_fd, relative, flags, mode if flags & os.O_CREAT else 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    if fd >= 0:
        return fd
    if err not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp profile that predates openat2
        raise OSError(err, os.strerror(err), relative)
    *parents, last = [part for part in relative.split("/") if part not in ("", ".")] or ["."]
    current = os.dup(dir_fd)
    try:
        for part in parents:
            following = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            os.close(current)
            current = following
        return os.open(last, flags | os.O_NOFOLLOW, mode, dir_fd=current)
    finally:
        os.close(current)


def open_beneath(root: str, real: str, flags: int, mode: int = 0o644) -> int:
    """Opens `real` (a path resolve_path accepted) through `root`, so a race cannot escape."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return openat_beneath(root_fd, os.path.relpath(real, root), flags, mode)
    finally:
        os.close(root_fd)


def root_of(cwd: str) -> str:
    return os.path.realpath(cwd) if cwd else task_root()


def _refusal(path: str, action: str, exc: OSError, root: str) -> Refused:
    if exc.errno == errno.EXDEV:
        return Refused(f"refused path {path!r}: it leads outside {root}")
    if exc.errno == errno.ENOENT:
        return Refused(f"no such file: {path}", missing=True)
    return Refused(f"cannot {action} {path}: {exc.strerror}")


def _describe_size(n: int) -> str:
    return f"{n / MIB:g} MiB" if n >= MIB and n % (MIB // 16) == 0 else f"{n} bytes"


if TYPE_CHECKING:
    Q = TypeVar("Q", bound="protocol.Request[Any]")
    Handler = Callable[[Any], "protocol.Reply"]
# op -> the function serving that request type (every op but run and kill).
HANDLERS: dict[str, Handler] = {}


def handles(kind: type[Q]) -> Callable[[Callable[[Q], protocol.Reply]], Callable[[Q], protocol.Reply]]:
    """Registers the decorated function as the handler of `kind` requests."""

    def register(handler: Callable[[Q], protocol.Reply]) -> Callable[[Q], protocol.Reply]:
        HANDLERS[kind.OP] = handler
        return handler

    return register


@handles(protocol.ReadFileRequest)
def read_file(request: protocol.ReadFileRequest) -> protocol.FileReply:
    root, path = resolve_path(request.path, request.cwd, request.roots)
    max_bytes = request.max_bytes
    try:
        fd = open_beneath(root, path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise _refusal(request.path, "read", exc, root) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not _is_regular(st.st_mode):
            raise Refused(f"{request.path} is not a regular file")
        if st.st_size > max_bytes:
            raise Refused(
                f"{request.path} is {st.st_size} bytes, larger than the read limit "
                f"of {_describe_size(max_bytes)}"
            )
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Refused(f"{request.path} is larger than the read limit of {_describe_size(max_bytes)}")
    return protocol.FileReply(path=path, size=len(data), content=data.decode("utf-8", "replace"))


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


@handles(protocol.WriteFileRequest)
def write_file(request: protocol.WriteFileRequest) -> protocol.FileReply:
    root, path = resolve_path(request.path, request.cwd, request.roots)
    max_bytes = request.max_bytes
    data = request.content.encode()
    if len(data) > max_bytes:
        raise Refused(
            f"content is {len(data)} bytes, larger than the write limit of {_describe_size(max_bytes)}"
        )
    if os.path.isdir(path):
        raise Refused(f"{request.path} is a directory")
    try:
        parent = _make_parents_beneath(root, os.path.relpath(os.path.dirname(path), root))
        try:
            # O_NONBLOCK: a FIFO there must not hang the agent; it is refused below.
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(os.path.basename(path), flags, 0o644, dir_fd=parent)
        finally:
            os.close(parent)
    except OSError as exc:
        raise _refusal(request.path, "write", exc, root) from None
    with os.fdopen(fd, "wb") as f:
        if not _is_regular(os.fstat(f.fileno()).st_mode):
            raise Refused(f"{request.path} is not a regular file")
        f.truncate(0)
        f.write(data)
    return protocol.FileReply(path=path, size=len(data))


def _make_parents_beneath(root: str, relative: str) -> int:
    """The directory `relative` below `root`, created as needed, one component at a time and
    each opened beneath the one before (a link swapped in cannot lead out); returns its fd."""
    current = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in [p for p in relative.split("/") if p not in ("", ".")]:
            try:
                os.mkdir(part, 0o755, dir_fd=current)
            except FileExistsError:
                pass
            following = openat_beneath(current, part, os.O_RDONLY | os.O_DIRECTORY)
            os.close(current)
            current = following
    except BaseException:
        os.close(current)
        raise
    return current


@handles(protocol.ListFilesRequest)
def list_files(request: protocol.ListFilesRequest) -> protocol.ListFilesReply:
    root, path = resolve_path(request.path, request.cwd, request.roots)
    try:
        fd = open_beneath(root, path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise Refused(f"no such directory: {request.path}", missing=True) from None
    except NotADirectoryError:
        raise Refused(f"{request.path} is not a directory") from None
    except OSError as exc:
        raise _refusal(request.path, "list", exc, root) from None
    try:
        with os.scandir(fd) as found:
            names = sorted(entry.name for entry in found)
        entries = []
        for name in names[: max(request.max_entries, 0)]:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue  # gone since the scan
            entries.append(
                protocol.FileEntry(name=name, type=_entry_type(st.st_mode), size=st.st_size, mtime=st.st_mtime)
            )
    finally:
        os.close(fd)
    return protocol.ListFilesReply(path=path, entries=entries, truncated=len(names) > max(request.max_entries, 0))


def _entry_type(mode: int) -> Literal["file", "directory", "symlink", "other"]:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    return "file" if stat.S_ISREG(mode) else "other"


# --- files as bytes (sandbox calls) ---------------------------------------------------------


def _open_resolved(request: Any, path: str, flags: int, action: str) -> int:
    root, real = resolve_path(path, request.cwd, request.roots)
    try:
        return open_beneath(root, real, flags)
    except OSError as exc:
        raise _refusal(path, action, exc, root) from None


@handles(protocol.ReadBytesRequest)
def read_bytes(request: protocol.ReadBytesRequest) -> protocol.BytesReply:
    length = min(max(request.length, 0), protocol.MAX_CHUNK_BYTES)
    fd = _open_resolved(request, request.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, "read")
    try:
        st = os.fstat(fd)
        if not _is_regular(st.st_mode):
            raise Refused(f"{request.path} is not a regular file")
        data = os.pread(fd, length, max(request.offset, 0))
    finally:
        os.close(fd)
    eof = request.offset + len(data) >= st.st_size or len(data) < length
    return protocol.BytesReply(
        path=request.path, data=binascii.b2a_base64(data, newline=False).decode("ascii"), size=st.st_size, eof=eof
    )


@handles(protocol.WriteBytesRequest)
def write_bytes(request: protocol.WriteBytesRequest) -> protocol.FileReply:
    root, path = resolve_path(request.path, request.cwd, request.roots)
    final = resolve_path(request.rename_to, request.cwd, request.roots) if request.rename_to else None
    if final is not None and os.path.isdir(final[1]):
        raise Refused(f"{request.rename_to} is a directory")
    try:
        data = binascii.a2b_base64(request.data)
    except ValueError:
        raise Refused("the chunk is not valid base64") from None
    if os.path.isdir(path):
        raise Refused(f"{request.path} is a directory")
    try:
        parent = _make_parents_beneath(root, os.path.relpath(os.path.dirname(path), root))
    except OSError as exc:
        raise _refusal(request.path, "write", exc, root) from None
    try:
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(os.path.basename(path), flags, 0o644, dir_fd=parent)
        except OSError as exc:
            raise _refusal(request.path, "write", exc, root) from None
        with os.fdopen(fd, "wb") as f:
            st = os.fstat(f.fileno())
            if not _is_regular(st.st_mode):
                raise Refused(f"{request.path} is not a regular file")
            start = st.st_size if request.append else 0
            if start + len(data) > request.max_bytes:
                raise Refused(
                    f"{request.rename_to or request.path} would be {start + len(data)} bytes, larger than "
                    f"the write limit of {_describe_size(request.max_bytes)}"
                )
            if not request.append:
                f.truncate(0)
            f.seek(start)
            f.write(data)
        if final is None or not request.commit:
            return protocol.FileReply(path=path, size=start + len(data))
        target_root, target = final
        try:
            target_dir = _make_parents_beneath(target_root, os.path.relpath(os.path.dirname(target), target_root))
        except OSError as exc:
            raise _refusal(request.rename_to, "write", exc, target_root) from None
        try:
            os.rename(os.path.basename(path), os.path.basename(target), src_dir_fd=parent, dst_dir_fd=target_dir)
        except OSError as exc:
            raise Refused(f"cannot write {request.rename_to}: {exc.strerror}") from None
        finally:
            os.close(target_dir)
        return protocol.FileReply(path=target, size=start + len(data))
    finally:
        os.close(parent)


def _entry(name: str, st: os.stat_result) -> protocol.FileEntry:
    return protocol.FileEntry(name=name, type=_entry_type(st.st_mode), size=st.st_size, mtime=st.st_mtime)


def _parent_beneath(request: Any, path: str, action: str) -> tuple[int, str, str]:
    """A descriptor of `path`'s parent directory (resolved and opened beneath its root), the
    path's last name, taken as it is (a link there is acted on, never followed), and the path
    as the agent sees it. A root itself (the workspace, /tmp) is refused."""
    if not path or "\x00" in path:
        raise Refused("the path is empty or contains a NUL byte")
    trimmed = path.rstrip("/") or "/"
    head, name = os.path.split(trimmed)
    root, parent_real = resolve_path(head or ".", request.cwd, request.roots)
    if name in ("", ".", ".."):
        raise Refused(f"refused path {path!r}: cannot {action} {parent_real} itself")
    if os.path.isabs(trimmed) and not head:
        raise Refused(f"refused path {path!r}: cannot {action} /")
    roots = [root_of(request.cwd), *(os.path.realpath(r) for r in request.roots)]
    if os.path.join(parent_real, name) in roots:
        raise Refused(f"refused path {path!r}: cannot {action} {os.path.join(parent_real, name)} itself")
    try:
        parent = open_beneath(root, parent_real, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise _refusal(path, action, exc, root) from None
    return parent, name, os.path.join(parent_real, name)


@handles(protocol.StatRequest)
def stat_path(request: protocol.StatRequest) -> protocol.StatReply:
    try:
        parent, name, real = _parent_beneath(request, request.path, "stat")
    except Refused:
        # A root (the workspace itself) has its stat too.
        root, real = resolve_path(request.path, request.cwd, request.roots)
        if real != root:
            raise
        return protocol.StatReply(path=real, entry=_entry(os.path.basename(real), os.stat(root)))
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        raise Refused(f"no such file or directory: {request.path}", missing=True) from None
    except OSError as exc:
        raise Refused(f"cannot stat {request.path}: {exc.strerror}") from None
    finally:
        os.close(parent)
    return protocol.StatReply(path=real, entry=_entry(name, st))


@handles(protocol.MkdirRequest)
def mkdir(request: protocol.MkdirRequest) -> protocol.DoneReply:
    root, real = resolve_path(request.path, request.cwd, request.roots)
    try:
        os.close(_make_parents_beneath(root, os.path.relpath(real, root)))
    except OSError as exc:
        raise _refusal(request.path, "make the directory", exc, root) from None
    return protocol.DoneReply(path=real)


@handles(protocol.RemoveRequest)
def remove(request: protocol.RemoveRequest) -> protocol.DoneReply:
    parent, name, real = _parent_beneath(request, request.path, "remove")
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            # rmtree with dir_fd works through descriptors: a link swapped in is removed, not followed.
            import shutil

            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        raise Refused(f"no such file or directory: {request.path}", missing=True) from None
    except OSError as exc:
        raise Refused(f"cannot remove {request.path}: {exc.strerror}") from None
    finally:
        os.close(parent)
    return protocol.DoneReply(path=real)


@handles(protocol.RenameRequest)
def rename(request: protocol.RenameRequest) -> protocol.DoneReply:
    source_dir, source, _ = _parent_beneath(request, request.path, "rename")
    try:
        target_dir, target, target_real = _parent_beneath(request, request.target, "replace")
        try:
            os.rename(source, target, src_dir_fd=source_dir, dst_dir_fd=target_dir)
        except FileNotFoundError:
            raise Refused(f"no such file or directory: {request.path}", missing=True) from None
        except OSError as exc:
            raise Refused(f"cannot rename {request.path} to {request.target}: {exc.strerror}") from None
        finally:
            os.close(target_dir)
    finally:
        os.close(source_dir)
    return protocol.DoneReply(path=target_real)


@handles(protocol.ChdirRequest)
def chdir(request: protocol.ChdirRequest) -> protocol.ChdirReply:
    os.chdir(request.path)
    # A warm sandbox learns its task: HOME, CORRAL_TASK_ID... (steps get theirs per run).
    os.environ.update(request.env)
    return protocol.ChdirReply(path=os.getcwd())


# --- processes -----------------------------------------------------------------------------


def cgroup_counters() -> dict[str, int]:
    counters: dict[str, int] = {}
    for name, candidates in CGROUP_COUNTERS.items():
        for path, key in candidates:
            try:
                with open(path, encoding="ascii") as f:
                    for line in f:
                        parts = line.split()
                        if len(parts) == 2 and parts[0] == key:
                            counters[name] = int(parts[1])
                            break
            except (OSError, ValueError):
                continue
            if name in counters:
                break
    return counters


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, session id, state) for every process this sandbox can see."""
    table: dict[int, tuple[int, int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        table[int(name)] = (int(fields[1]), int(fields[3]), fields[0])
    return table


def kill_tree(root_pid: int) -> None:
    """Kills a step's whole process tree: its session plus every descendant, until none is left.

    Processes are stopped before being killed so they cannot fork faster than we kill; the
    scan repeats because a child forked between two scans would otherwise escape.
    """
    me = os.getpid()
    for _ in range(100):
        table = _proc_table()
        victims = {pid for pid, (_, sid, state) in table.items() if sid == root_pid and state != "Z"}
        if root_pid in table and table[root_pid][2] != "Z":
            victims.add(root_pid)
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _, state) in table.items():
                if ppid in victims and pid not in victims and state != "Z":
                    victims.add(pid)
                    grew = True
        victims.discard(me)
        victims.discard(1)
        if not victims:
            return
        for sig in (_signal.SIGSTOP, _signal.SIGKILL):
            for pid in victims:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        time.sleep(0.005)


# The file-size limit the agent holds itself (bytes; None: none yet), so that runs asking for
# it need no preexec_fn: a process spawned without one (vfork) starts in ~1 ms instead of ~10,
# inheriting the limit (hard as soft: it cannot raise it). The agent's own writes obey it too,
# which is the sandbox's limit anyway (SIGXFSZ is ignored here: such a write fails with EFBIG;
# Popen's restore_signals gives the processes back the default).
_own_file_size: int | None = None


def _inherits_limits(limits: protocol.ProcessLimits) -> bool:
    """Whether a run with `limits` can be spawned without preexec_fn: the sandbox's cgroup
    holds memory and processes, and its file-size limit is the one the agent holds."""
    global _own_file_size
    if limits.memory_mb > 0 or limits.max_processes > 0:
        return False
    wanted = limits.max_file_size_mb * MIB if limits.max_file_size_mb > 0 else resource.RLIM_INFINITY
    if _own_file_size is None:
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (wanted, wanted))
        except (OSError, ValueError):
            return False
        _own_file_size = wanted
    return _own_file_size == wanted


def _lower_oom_priority(pid: int) -> None:
    """What _limit_setter does for the OOM killer, from outside, for a vfork-spawned run."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write("500")
    except OSError:
        pass


def _set_limits(pid: int, limits: protocol.ProcessLimits) -> None:
    """What _limit_setter's rlimits are, set from outside on a process already started."""
    resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))
    for which, value in (
        (resource.RLIMIT_AS, limits.memory_mb * MIB),
        (resource.RLIMIT_NPROC, limits.max_processes),
        (resource.RLIMIT_FSIZE, limits.max_file_size_mb * MIB),
    ):
        if value > 0:
            resource.prlimit(pid, which, (value, value))


def _limit_setter(limits: protocol.ProcessLimits) -> Callable[[], None]:
    memory = limits.memory_mb * MIB
    processes = limits.max_processes
    file_size = limits.max_file_size_mb * MIB

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # Under a memory cgroup, let the OOM killer pick step processes before the agent.
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("500")
        except OSError:
            pass
        if memory > 0:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if processes > 0:
            resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
        if file_size > 0:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return apply


def _write_script(request_id: int, name: str, code: str) -> str:
    directory = os.path.join(SCRIPT_DIR, f"step-{request_id}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(code)
    return path


def build_argv(request: protocol.RunRequest) -> list[str]:
    kind = request.kind
    if kind == "shell":
        return ["/bin/sh", "-c", request.code]
    if kind == "python":
        return [PYTHON, _write_script(request.id, "main.py", request.code)]
    if kind == "typescript":
        return [NODE, TS_RUNNER, _write_script(request.id, "main.ts", request.code)]
    if kind == "argv":
        if not request.argv:
            raise Refused("empty argv")
        return list(request.argv)
    raise Refused(f"unknown process kind {kind!r}")


class TypeScriptChecker:
    """The sandbox's warm TypeScript checker (`node ts-run.js --serve`), started by the first
    TypeScript step and kept: a cold compiler costs ~2 s per step, a warm one checks a step's
    code in tens of ms. A checked step then runs its emitted main.js (`ts-run.js --compiled`);
    a step with errors gets the compiler's messages as a step that ran would have. Without a
    checker (node missing, it keeps dying), steps compile cold as they did before."""

    def __init__(self) -> None:
        self.lock = _thread.allocate_lock()
        self.pid = 0
        self.channel: Any = None  # our end of a socket pair: no SIGPIPE if the checker died
        self.pending = b""
        self.failures = 0

    def check(self, main_ts: str, timeout: float) -> list[str] | bool | None:
        """True: main.js is written beside main_ts; a list: the compiler's diagnostics; False:
        the check took longer than `timeout`; None: no checker (compile cold instead)."""
        with self.lock:
            for _ in range(2):  # a checker that died (or was killed by a step) is started again
                if self.failures >= 3 or (self.channel is None and not self._start()):
                    return None
                try:
                    reply = self._ask(main_ts, timeout)
                except TimeoutError:
                    self._stop()
                    return False
                except (OSError, ValueError):
                    self._stop()
                    self.failures += 1
                    continue
                if "diagnostics" in reply:
                    return [str(line) for line in reply["diagnostics"]]
                if reply.get("ok") is True:
                    return True
                self.failures += 1
                return None  # it failed on this file: the cold compiler says why
            return None

    def _start(self) -> bool:
        import socket

        ours, theirs = socket.socketpair()
        try:
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            try:
                actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate((theirs.fileno(), theirs.fileno(), devnull))]
                env = {**os.environ, "CORRAL_AGENT_SCRIPT_DIR": SCRIPT_DIR}
                self.pid = os.posix_spawn(NODE, [NODE, TS_RUNNER, "--serve"], env, file_actions=actions, setsid=True)
            finally:
                os.close(devnull)
        except OSError:
            ours.close()
            self.failures += 1
            return False
        finally:
            theirs.close()
        _lower_oom_priority(self.pid)
        self.channel = ours
        self.pending = b""
        return True

    def _ask(self, main_ts: str, timeout: float) -> dict[str, Any]:
        import socket

        self.channel.sendall(main_ts.encode() + b"\n", socket.MSG_NOSIGNAL)
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.channel], [], [], left)[0]:
                raise TimeoutError
            chunk = self.channel.recv(READ_CHUNK)
            if not chunk:
                raise OSError("the TypeScript checker ended")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        reply = protocol.parse_line(line)
        return reply

    def _stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.pid:
            try:
                os.killpg(self.pid, _signal.SIGKILL)
            except OSError:
                pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = 0


typescript_checker = TypeScriptChecker()


class Standby:
    """A started `ts-run.js --standby`: the process, our ends of its stdout and stderr, and
    the pipe that names its step."""

    def __init__(self, proc: Spawned, stdout: int, stderr: int, control: int, env: dict[str, str]) -> None:
        self.proc, self.stdout, self.stderr, self.control, self.env = proc, stdout, stderr, control, env

    def discard(self) -> None:
        """Ends it (closing its control pipe alone would do, but it may be stopped) and reaps it."""
        for fd in (self.control, self.stdout, self.stderr):
            os.close(fd)
        try:
            os.killpg(self.proc.pid, _signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()


class TypeScriptStandby:
    """Node started ahead of a checked TypeScript step, so that the step pays for neither the
    compiler nor node's own startup (~40 ms of CPU, far more on a loaded machine): one is
    started with a checked step's environment while that step runs, and the next step with
    the same environment is handed to it. It is spawned as a step's process is (its own session, the
    OOM killer's pick), and its step's rlimits, when the sandbox's cgroup does not hold them,
    are set on it before it is told its file. A step with stdin, another environment, or a
    standby that died, runs `ts-run.js --compiled` as before."""

    def __init__(self) -> None:
        self.lock = _thread.allocate_lock()
        self.ready: Standby | None = None

    def take(self, request: protocol.RunRequest) -> Standby | None:
        """The waiting standby if it fits this step (None: the step starts node itself, and
        prepare() starts one for the next; not now, beside a checker maybe starting cold)."""
        if request.stdin:
            return None
        with self.lock:
            ready, self.ready = self.ready, None
        if ready is not None and ready.env == request.env and ready.proc.poll() is None:
            return ready
        if ready is not None:
            ready.discard()
        return None

    def prepare(self, request: protocol.RunRequest) -> None:
        """Starts the standby of the step after `request`, with its environment."""
        if not request.stdin:
            self.keep(self._start(dict(request.env)))

    def keep(self, standby: Standby | None) -> None:
        """Puts back a standby its step did not use (a type error, no checker)."""
        if standby is None:
            return
        with self.lock:
            previous, self.ready = self.ready, standby
        if previous is not None:
            previous.discard()

    def go(self, standby: Standby, main_ts: str, request: protocol.RunRequest) -> tuple[Spawned, int, int] | None:
        """Tells `standby` to run main_ts's main.js for `request`: its process and our ends of
        its stdout and stderr; None (the standby ended) if it cannot."""
        cwd = request.cwd or os.getcwd()
        try:
            if "\x00" in main_ts + cwd or not os.path.isdir(cwd) or standby.proc.poll() is not None:
                raise OSError("the standby cannot run this step")
            if not _inherits_limits(request.limits):
                _set_limits(standby.proc.pid, request.limits)
            message = f"{main_ts}\x00{cwd}\x00".encode()
            # Non-blocking: a standby stopped by an earlier step must not hold the agent.
            os.set_blocking(standby.control, False)
            if os.write(standby.control, message) != len(message):
                raise OSError("short write to the standby")
        except (OSError, ValueError):
            standby.discard()
            return None
        os.close(standby.control)
        return standby.proc, standby.stdout, standby.stderr

    def _start(self, env: dict[str, str]) -> Standby | None:
        child: list[int] = []
        ours: list[int] = []
        try:
            child.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            for _ in ("stdout", "stderr"):
                read_end, write_end = os.pipe()
                child.append(write_end)
                ours.append(read_end)
            read_end, write_end = os.pipe()
            child.append(read_end)
            ours.append(write_end)
            actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(child)]
            pid = os.posix_spawn(
                NODE, [NODE, TS_RUNNER, "--standby"], env, file_actions=actions, setsid=True,
                setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ),
            )
        except OSError:
            for fd in ours:
                os.close(fd)
            return None
        finally:
            for fd in child:
                os.close(fd)
        _lower_oom_priority(pid)
        return Standby(Spawned(pid), ours[0], ours[1], ours[2], env)


typescript_standby = TypeScriptStandby()


def _failed(request_id: int, error: str) -> protocol.ExitReply:
    """The exit report of a run that never started."""
    return protocol.ExitReply(id=request_id, error=error)


def _discard_forever(fds: list[int]) -> None:
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    remaining = set(fds)
    while remaining:
        for fd, _ in poller.poll():
            try:
                chunk = os.read(fd, READ_CHUNK)
            except OSError:
                chunk = b""
            if not chunk:
                poller.unregister(fd)
                remaining.discard(fd)
                os.close(fd)


class Spawned:
    """A process started with posix_spawn, waited for like a Popen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


def _executable(name: str, env: dict[str, str]) -> str:
    """`name` looked up in the step's PATH, as execvpe does (a name with a slash as it is)."""
    if "/" in name:
        return name
    for directory in os.get_exec_path(env):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def spawn(
    argv: list[str], env: dict[str, str], stdin_fd: int, stdout_fd: int, stderr_fd: int, cwd: str, limits: protocol.ProcessLimits
) -> Spawned | Any:
    """Starts a step's process in a session of its own, on the given descriptors. Nearly always
    posix_spawn (vfork and exec: ~1 ms); a run with its own rlimits or directory needs code in
    the child before exec, which only subprocess's preexec_fn / cwd give."""
    fast = _inherits_limits(limits)
    if cwd or not fast:
        import subprocess

        proc = subprocess.Popen(
            argv,
            stdin=stdin_fd,
            stdout=stdout_fd,
            stderr=stderr_fd,
            env=env,
            start_new_session=True,
            preexec_fn=None if fast else _limit_setter(limits),
            close_fds=True,
            cwd=cwd or None,
        )
        if fast:
            _lower_oom_priority(proc.pid)
        return proc
    # Every other descriptor of the agent is close-on-exec (Python's default, and main()).
    actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate((stdin_fd, stdout_fd, stderr_fd))]
    # What Popen's restore_signals does: the step gets the default SIGPIPE and SIGXFSZ back.
    pid = os.posix_spawn(
        _executable(argv[0], env), argv, env, file_actions=actions, setsid=True, setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ)
    )
    _lower_oom_priority(pid)
    return Spawned(pid)


class StepRun:
    """One process step: spawn, stream output, enforce the timeout, report how it ended."""

    def __init__(self, request: protocol.RunRequest) -> None:
        self.request = request
        self.id = request.id
        # Set by a kill request; the run's loop looks at it at least every 250 ms.
        self.kill_requested = False
        self.pid: int | None = None
        # What StdinRequests queued for the process's stdin (None: close it), and how much.
        self.stdin: Any = None
        if request.stdin:
            import queue

            self.stdin = queue.Queue()
        self.stdin_pending = 0
        self.stdin_lock = _thread.allocate_lock()

    def feed_stdin(self, data: bytes, close: bool) -> None:
        if self.stdin is None:
            raise Refused(f"run {self.id} was not started with stdin")
        with self.stdin_lock:
            if self.stdin_pending + len(data) > MAX_STDIN_QUEUED:
                raise Refused(
                    f"run {self.id} has {self.stdin_pending} bytes of stdin not read yet; "
                    f"at most {_describe_size(MAX_STDIN_QUEUED)} wait"
                )
            self.stdin_pending += len(data)
        if data:
            self.stdin.put(data)
        if close:
            self.stdin.put(None)

    def _write_stdin(self, pipe: int) -> None:
        """Feeds the process's stdin from the queue, in a thread of its own: a process that
        does not read must not stall the agent."""
        assert self.stdin is not None
        try:
            while (data := self.stdin.get()) is not None:
                with self.stdin_lock:
                    self.stdin_pending -= len(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(pipe, view) :]
        except OSError:
            pass  # the process closed its stdin or ended
        finally:
            os.close(pipe)

    def run(self) -> None:
        try:
            self._run()
        except Refused as exc:
            send(_failed(self.id, str(exc)))
        except Exception as exc:  # report, never take the agent down
            send(_failed(self.id, f"could not run the step: {exc}"))
        finally:
            with _steps_lock:
                _steps.pop(self.id, None)

    def _start(self, argv: list[str]) -> tuple[Any, int | None, int, int]:
        """The process, and our ends of its pipes: stdin (None: it reads /dev/null), stdout, stderr."""
        request = self.request
        child: list[int] = []
        ours: list[int] = []
        try:
            if self.stdin is not None:
                stdin_read, stdin_write = os.pipe()
                child.append(stdin_read)
                ours.append(stdin_write)
            else:
                child.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            for _ in ("stdout", "stderr"):
                read_end, write_end = os.pipe()
                child.append(write_end)
                ours.append(read_end)
            try:
                stdin_fd, stdout_fd, stderr_fd = child
                proc = spawn(argv, dict(request.env), stdin_fd, stdout_fd, stderr_fd, request.cwd, request.limits)
            except OSError as exc:
                raise Refused(f"could not start {argv[0]}: {exc.strerror}") from None
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in child:
                os.close(fd)
        stdin = ours.pop(0) if self.stdin is not None else None
        return proc, stdin, ours[0], ours[1]

    def _report_unchecked(self, diagnostics: list[str] | bool) -> None:
        """A TypeScript step whose check failed, told as `ts-run.js` would have: the compiler's
        messages on stderr and exit code 2; or a check that outlived the step's timeout."""
        if not isinstance(diagnostics, list):
            send(protocol.ExitReply(id=self.id, timed_out=True, signal=_signal.SIGKILL))
            return
        data = "".join(line + "\n" for line in diagnostics).encode()
        cap = self.request.max_output_bytes
        if data:
            send(protocol.OutputReply(id=self.id, stream="stderr", data=data[: max(cap, 0)].decode("utf-8", "replace")))
        send(protocol.ExitReply(id=self.id, exit_code=2, stderr_truncated=len(data) > cap))

    def _run(self) -> None:
        request = self.request
        argv = build_argv(request)
        timeout = request.timeout
        cap = request.max_output_bytes
        ready: tuple[Spawned, int, int] | None = None
        if request.kind == "typescript":
            started = time.monotonic()
            standby = typescript_standby.take(request)
            checked = typescript_checker.check(argv[-1], timeout)
            if checked is True:
                argv = [NODE, TS_RUNNER, "--compiled", argv[-1]]
                timeout = max(timeout - (time.monotonic() - started), 0.0)
                if standby is not None:
                    ready = typescript_standby.go(standby, argv[-1], request)
                typescript_standby.prepare(request)  # the next step's, starting while this one runs
            else:
                typescript_standby.keep(standby)
            if checked is False or isinstance(checked, list):
                self._report_unchecked(checked)
                return
        if ready is None:
            proc, stdin, stdout, stderr = self._start(argv)
        else:
            (proc, stdout, stderr), stdin = ready, None
        self.pid = proc.pid
        if stdin is not None:
            _thread.start_new_thread(self._write_stdin, (stdin,))
        counters_before = cgroup_counters()

        deadline = time.monotonic() + timeout
        streams: dict[int, protocol.StreamName] = {stdout: "stdout", stderr: "stderr"}
        kept = {"stdout": 0, "stderr": 0}
        truncated = {"stdout": False, "stderr": False}
        decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in kept}
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN)
        open_pipes = set(streams)
        pidfd = _pidfd_open(proc.pid)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)

        def emit(name: protocol.StreamName, chunk: bytes, final: bool = False) -> None:
            room = cap - kept[name]
            if len(chunk) > room:
                chunk = chunk[: max(room, 0)]
                truncated[name] = True
            kept[name] += len(chunk)
            text = decoders[name].decode(chunk, final)
            if text:
                send(protocol.OutputReply(id=self.id, stream=name, data=text))

        timed_out = killed = False
        exited_at: float | None = None
        while open_pipes:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at >= DRAIN_SECONDS:
                break
            if exited_at is None and (now >= deadline or self.kill_requested):
                timed_out = not self.kill_requested
                killed = not timed_out
                kill_tree(proc.pid)
                proc.wait()
                exited_at = time.monotonic()
                continue
            wait = DRAIN_SECONDS if exited_at is not None else min(deadline - now, 0.25)
            if pidfd is None and exited_at is None:
                wait = min(wait, 0.05)
            for fd, _ in poller.poll(max(int(wait * 1000), 0)):
                if fd == pidfd:
                    poller.unregister(pidfd)
                    continue
                chunk = os.read(fd, READ_CHUNK)
                name = streams[fd]
                if not chunk:
                    poller.unregister(fd)
                    open_pipes.discard(fd)
                    emit(name, b"", final=True)
                    continue
                if kept[name] < cap:
                    emit(name, chunk)
                else:
                    truncated[name] = True
        if pidfd is not None:
            os.close(pidfd)
        for fd in streams:
            if fd not in open_pipes:
                os.close(fd)
        if open_pipes:
            _thread.start_new_thread(_discard_forever, (list(open_pipes),))
        returncode = proc.wait()
        if self.stdin is not None:
            self.stdin.put(None)  # the writer thread ends
        reply = protocol.ExitReply(
            id=self.id,
            exit_code=returncode if returncode >= 0 else None,
            signal=-returncode if returncode < 0 else None,
            timed_out=timed_out,
            killed=killed,
            stdout_truncated=truncated["stdout"],
            stderr_truncated=truncated["stderr"],
        )
        after = cgroup_counters()
        events = {k: after[k] - counters_before.get(k, after[k]) for k in after}
        if any(events.values()):
            reply.limit_events = events
        if events.get("pids_max"):
            # The step filled the sandbox's process table: what it left behind would keep every
            # later step (and this agent's threads) from starting, so it goes too.
            kill_tree(proc.pid)
        send(reply)


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


_steps: dict[int, StepRun] = {}
_steps_lock = _thread.allocate_lock()


def start_run(request: protocol.RunRequest) -> None:
    step = StepRun(request)
    with _steps_lock:
        _steps[step.id] = step
    try:
        _thread.start_new_thread(step.run, ())
    except RuntimeError as exc:  # no thread to be had: the process limit is reached
        with _steps_lock:
            _steps.pop(step.id, None)
        send(_failed(step.id, f"could not start the step: {exc}"))


def _step(target: int) -> StepRun:
    with _steps_lock:
        step = _steps.get(target)
    if step is None:
        raise Refused(f"no run {target} is running")
    return step


@handles(protocol.StdinRequest)
def write_stdin(request: protocol.StdinRequest) -> protocol.DoneReply:
    try:
        data = binascii.a2b_base64(request.data)
    except ValueError:
        raise Refused("stdin data is not valid base64") from None
    _step(request.target).feed_stdin(data, request.close)
    return protocol.DoneReply()


@handles(protocol.SignalRequest)
def signal_run(request: protocol.SignalRequest) -> protocol.DoneReply:
    step = _step(request.target)
    if step.pid is None:
        raise Refused(f"run {request.target} has not started its process")
    if request.signal not in _signal.valid_signals():
        raise Refused(f"unknown signal {request.signal}")
    try:
        # The run's process leads its own session and process group (start_new_session).
        os.killpg(step.pid, request.signal)
    except ProcessLookupError:
        raise Refused(f"run {request.target} has ended") from None
    return protocol.DoneReply()


def kill_run(request: protocol.KillRequest) -> None:
    with _steps_lock:
        target = _steps.get(request.target)
    if target is not None:
        target.kill_requested = True


def handle(line: bytes) -> None:
    """Serves one request line; every request with an id gets its reply (runs: an exit report)."""
    try:
        request = protocol.decode_request(protocol.parse_line(line))
    except protocol.ProtocolError as exc:
        send(protocol.ErrorReply(id=exc.request_id or 0, error=f"malformed request: {exc}"))
        return
    if isinstance(request, protocol.RunRequest):
        start_run(request)
        return
    if isinstance(request, protocol.KillRequest):
        kill_run(request)
        return
    reply: protocol.Reply
    try:
        handler = HANDLERS.get(request.OP)
        if handler is None:
            raise Refused(f"unknown op {request.OP!r}")
        reply = handler(request)
    except Refused as exc:
        reply = protocol.ErrorReply(error=str(exc), missing=exc.missing)
    except Exception as exc:
        reply = protocol.ErrorReply(error=f"{type(exc).__name__}: {exc}")
    reply.id = request.id
    send(reply)


PR_SET_DUMPABLE = 4


def close_inherited_fds() -> None:
    """Steps are spawned without closing descriptors (Python opens its own close-on-exec):
    anything the agent inherited beyond stdio is made close-on-exec too."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the directory's own descriptor, closed since


def make_undumpable() -> None:
    """Steps run as our uid: undumpable, we cannot be ptraced by them, and our /proc entries
    (fd/, mem) are root's, so a step cannot write into the pipe that reports on it. The flag
    is reset by execve, so the steps themselves stay ordinary processes."""
    try:
        # prctl through ctypes's C core: ctypes itself would cost more than the whole agent.
        import _ctypes

        program = _ctypes.dlopen(None, os.RTLD_NOW)  # type: ignore[arg-type]  # None: the program itself
        prctl = _ctypes.dlsym(program, "prctl")
        if _ctypes.call_function(prctl, (PR_SET_DUMPABLE, 0, 0, 0, 0)) != 0:
            raise OSError("prctl(PR_SET_DUMPABLE, 0) failed")
    except (OSError, AttributeError) as exc:
        sys.stderr.write(f"corral agent: cannot protect itself from its steps: {exc}\n")
        raise SystemExit(70) from None


def take_channel(argv: Sequence[str]) -> None:
    """`--channel R,W`: the executor's pipes arrive on those descriptors instead of stdio
    (bubblewrap: its pid 1 then holds none of them); they become our stdin and stdout."""
    if "--channel" not in argv[:-1]:
        return
    requests, replies = (int(fd) for fd in argv[argv.index("--channel") + 1].split(","))
    for fd, target in ((requests, 0), (replies, 1)):
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)


F_SETPIPE_SZ = 1031
PIPE_BYTES = MIB


def widen_pipes() -> None:
    """Pipes of 1 MiB for the protocol where it is a pipe (bubblewrap): a file chunk's line
    then crosses in a few writes instead of dozens of 64 KiB ones. Best effort."""
    for fd in (0, 1):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass


def main() -> None:
    make_undumpable()
    take_channel(sys.argv)
    # A step must not be able to stop the agent with ^C-style signals sent to everyone.
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    # See _own_file_size: a write over the file-size limit fails instead of killing the agent.
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)
    close_inherited_fds()
    # No core dumps, for the agent and (inherited) every process it spawns.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.makedirs(SCRIPT_DIR, mode=0o700, exist_ok=True)
    widen_pipes()
    send(protocol.ReadyReply(pid=os.getpid(), protocol=protocol.PROTOCOL_VERSION))
    for line in sys.stdin.buffer:
        if line.strip():
            handle(line)
    # The executor went away: take every step process down with us.
    with _steps_lock:
        running = list(_steps.values())
    for step in running:
        step.kill_requested = True
    # Held for good: no thread is inside a write to stdout while the interpreter finalizes it
    # (which it would wait for, then abort).
    _write_lock.acquire()


if __name__ == "__main__":
    main()
