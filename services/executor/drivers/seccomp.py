"""The syscall filter of every sandbox, on both drivers: one deny list, one BPF program.

The list below is built into a seccomp BPF program by libseccomp (through pyseccomp, a ctypes
binding with the API of libseccomp's own Python module). The bubblewrap driver hands it to
`bwrap --seccomp FD`, which installs it right before exec'ing the agent; the docker driver
installs the same program as the container's first process (`docker_entrypoint`), which then
stays the container's init, so every process in the container runs under it.

On docker this filter is stacked on the engine's own default profile rather than replacing
it: the kernel applies every installed filter and the strictest answer wins, so nothing that
Docker's allow-list refuses becomes allowed, whatever the engine's version, and a deny list
(default allow) is enough here. On bubblewrap it is the only filter; it denies Docker's
documented dangerous calls (plus a few Docker also refuses), io_uring, and what
systemd's RestrictSUIDSGID= denies: making a setuid or setgid file, which would keep its bits
on the host where the task directory lives.

Denied calls fail with EPERM (ENOSYS where the caller should fall back to an older call:
io_uring, clone3, openat2), never by killing, so programs that probe for a feature go on.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import stat
import tempfile
from dataclasses import dataclass
from typing import Any

import structlog

from corral.config import Settings
from services.executor.drivers.base import SandboxError

log = structlog.get_logger()

# Refused outright with EPERM. Docker's default profile denies each of these too.
# fmt: off
DENIED = (
    # Kernel, modules, system state: none of a sandbox's business.
    "acct", "create_module", "delete_module", "finit_module", "get_kernel_syms", "init_module",
    "query_module", "kexec_file_load", "kexec_load", "reboot", "swapon", "swapoff", "nfsservctl",
    "sysfs", "_sysctl", "ustat", "uselib", "lookup_dcookie", "syslog", "vhangup", "quotactl",
    "quotactl_fd",
    # Clocks.
    "clock_adjtime", "clock_adjtime64", "clock_settime", "clock_settime64", "settimeofday", "stime",
    # I/O ports and virtual 8086 mode.
    "ioperm", "iopl", "vm86", "vm86old",
    # The kernel keyring (not namespaced).
    "add_key", "keyctl", "request_key",
    # Kernel programs, profiling and another process's memory (ptrace itself stays allowed,
    # as in Docker: the agent is undumpable, and strace/gdb need it).
    "bpf", "perf_event_open", "kcmp", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
    "process_madvise", "userfaultfd",
    # NUMA memory policy.
    "get_mempolicy", "set_mempolicy", "set_mempolicy_home_node", "mbind", "move_pages",
    "migrate_pages",
    # Mounts, namespaces, file handles (open_by_handle_at is the "shocker" escape).
    "mount", "umount", "umount2", "pivot_root", "chroot", "setns", "unshare", "fsopen", "fsconfig",
    "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "name_to_handle_at",
    "open_by_handle_at",
)
# fmt: on

# Refused with ENOSYS, which callers take as "not on this kernel" and fall back from:
# io_uring (a large attack surface of its own, and it would bypass this filter's per-call
# checks), and calls whose flags or mode live in a struct the filter cannot read: clone3
# (namespace flags; glibc falls back to clone, checked below) and openat2 (O_CREAT mode; the
# agent and libc fall back to openat).
DENIED_ENOSYS = ("io_uring_setup", "io_uring_enter", "io_uring_register", "clone3", "openat2")

S_ISXID = (stat.S_ISUID, stat.S_ISGID)
S_IFMT = 0o170000  # the file-type bits of a mode
O_TMPFILE_BIT = os.O_TMPFILE & ~os.O_DIRECTORY  # __O_TMPFILE: creates (with a mode) like O_CREAT
# <linux/sched.h>: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
# personality(2) values Docker allows: PER_LINUX (0), PER_LINUX32 (0x8), UNAME26 (0x20000),
# both, and 0xffffffff (a query). Not ADDR_NO_RANDOMIZE: gdb warns and runs without it.
PERSONA_BITS = 0x0008 | 0x0020000


@dataclass(frozen=True)
class ArgMask:
    """Matches when (argument `arg` & `mask`) == `value`."""

    arg: int
    mask: int
    value: int


@dataclass(frozen=True)
class Rule:
    """Refuse `syscall` with EPERM when every condition matches."""

    syscall: str
    when: tuple[ArgMask, ...]


def _mode_rules(syscall: str, mode_arg: int) -> list[Rule]:
    """chmod-like calls whose mode has S_ISUID or S_ISGID."""
    return [Rule(syscall, (ArgMask(mode_arg, bit, bit),)) for bit in S_ISXID]


def _create_rules(syscall: str, flags_arg: int, mode_arg: int) -> list[Rule]:
    """open-like calls that create a file (O_CREAT or O_TMPFILE) with S_ISUID or S_ISGID."""
    return [
        Rule(syscall, (ArgMask(flags_arg, creating, creating), ArgMask(mode_arg, bit, bit)))
        for creating in (os.O_CREAT, O_TMPFILE_BIT)
        for bit in S_ISXID
    ]


def _device_rules(syscall: str, mode_arg: int) -> list[Rule]:
    """mknod of a character or block device, or of a setuid/setgid file."""
    kinds = [Rule(syscall, (ArgMask(mode_arg, S_IFMT, kind),)) for kind in (stat.S_IFCHR, stat.S_IFBLK)]
    return kinds + _mode_rules(syscall, mode_arg)


def _persona_rules() -> list[Rule]:
    """personality() with any persona but Docker's allowed five (0, 0x8, 0x20000, 0x20008,
    0xffffffff). The kernel reads the low 32 bits only, and libseccomp takes one comparison per
    argument per rule, so: an unknown bit is set while bit 31 is clear, or bit 31 is set while
    some other bit is clear (which leaves the 0xffffffff query alone)."""
    unknown = [1 << bit for bit in range(31) if not (1 << bit) & PERSONA_BITS]
    top = 1 << 31
    rules = [Rule("personality", (ArgMask(0, bit | top, bit),)) for bit in unknown]
    rules += [Rule("personality", (ArgMask(0, top | (1 << bit), top),)) for bit in range(31)]
    return rules


def conditional_rules() -> list[Rule]:
    """Calls refused only for some arguments."""
    rules = [Rule("clone", (ArgMask(0, flag, flag),)) for flag in NAMESPACE_FLAGS]
    rules += _persona_rules()
    # ptrace of the sandbox's init (bwrap's, or tini): attaching stops it and hangs the sandbox.
    rules.append(Rule("ptrace", (ArgMask(1, 0xFFFFFFFF, 1),)))
    # RestrictSUIDSGID=: no setuid/setgid file and no device can be made (the task directory
    # is on the host, where any host user could run such a file as its owner).
    for syscall, mode_arg in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2), ("creat", 1)):
        rules += _mode_rules(syscall, mode_arg)
    rules += _create_rules("open", 1, 2) + _create_rules("openat", 2, 3)
    rules += _device_rules("mknod", 1) + _device_rules("mknodat", 2)
    return rules


def described() -> list[str]:
    """What the filter refuses, one line per call, for logs and docs."""
    lines = [f"{name}: EPERM" for name in DENIED]
    lines += [f"{name}: ENOSYS" for name in DENIED_ENOSYS]
    conditions = {
        "clone": "with a namespace flag",
        "ptrace": "of pid 1 (the sandbox's init)",
        "personality": "with a persona other than 0, 0x8, 0x20000, 0x20008 (or the 0xffffffff query)",
        "chmod": "with S_ISUID or S_ISGID",
        "fchmod": "with S_ISUID or S_ISGID",
        "fchmodat": "with S_ISUID or S_ISGID",
        "fchmodat2": "with S_ISUID or S_ISGID",
        "creat": "with S_ISUID or S_ISGID",
        "open": "creating a file with S_ISUID or S_ISGID",
        "openat": "creating a file with S_ISUID or S_ISGID",
        "mknod": "of a device, or with S_ISUID or S_ISGID",
        "mknodat": "of a device, or with S_ISUID or S_ISGID",
    }
    lines += [f"{name} {condition}: EPERM" for name, condition in conditions.items()]
    return lines


def _load_pyseccomp() -> Any:
    """The pyseccomp module, or a clear error naming what is missing."""
    try:
        import pyseccomp
    except ImportError as exc:
        raise SandboxError(
            "the sandbox syscall filter needs the `pyseccomp` Python package (pip install -e .); "
            "CORRAL_SANDBOX_SECCOMP=false turns the filter off (debugging only)"
        ) from exc
    except (RuntimeError, OSError) as exc:  # pyseccomp raises RuntimeError without the library
        raise SandboxError(
            f"the sandbox syscall filter needs libseccomp ({exc}; apt-get install libseccomp2); "
            "CORRAL_SANDBOX_SECCOMP=false turns the filter off (debugging only)"
        ) from exc
    return pyseccomp


def build_bpf() -> bytes:
    """The filter as a seccomp BPF program (struct sock_filter[]) for this machine's arch."""
    sc = _load_pyseccomp()
    filt = sc.SyscallFilter(sc.ALLOW)
    # 32-bit x86 calls (int 0x80) are filtered the same (libseccomp maps the names); any other
    # ABI, x32 included, gets ENOSYS.
    if sc.system_arch() == sc.Arch.X86_64:
        filt.add_arch(sc.Arch.X86)
    filt.set_attr(sc.Attr.ACT_BADARCH, sc.ERRNO(errno.ENOSYS))
    try:
        for name in DENIED:
            filt.add_rule(sc.ERRNO(errno.EPERM), syscall_number(sc, name))
        for name in DENIED_ENOSYS:
            filt.add_rule(sc.ERRNO(errno.ENOSYS), syscall_number(sc, name))
        for rule in conditional_rules():
            args = [sc.Arg(c.arg, sc.MASKED_EQ, c.mask, c.value) for c in rule.when]
            filt.add_rule(sc.ERRNO(errno.EPERM), syscall_number(sc, rule.syscall), *args)
        with tempfile.TemporaryFile() as out:
            filt.export_bpf(out)
            out.seek(0)
            return out.read()
    except OSError as exc:
        raise SandboxError(f"libseccomp could not build the sandbox syscall filter: {exc}") from exc


# Calls newer than some libseccomp releases still in use, by their number: since Linux 5.1 a
# new call has the same number on every arch (but alpha), so the number is right for both
# x86_64 and x86 filters.
UNIFIED_NUMBERS = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "openat2": 437,
    "pidfd_getfd": 438,
    "process_madvise": 440,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "set_mempolicy_home_node": 450,
    "fchmodat2": 452,
}


def syscall_number(sc: Any, name: str) -> int:
    """libseccomp's number for `name` (negative for a call this arch lacks but another of the
    filter's arches has), or the call's unified number when this libseccomp predates it."""
    number = int(sc.resolve_syscall(sc.Arch.NATIVE, name))
    if number == -1:  # __NR_SCMP_ERROR: this libseccomp does not know the name
        if name not in UNIFIED_NUMBERS:
            raise SandboxError(f"libseccomp does not know the syscall {name!r}; upgrade libseccomp2")
        return UNIFIED_NUMBERS[name]
    return number


def sandbox_filter(settings: Settings) -> bytes | None:
    """The BPF program every sandbox of this executor gets, or None when the setting turned
    the filter off (said loudly: sandboxes then keep keyctl, io_uring and setuid files)."""
    if not settings.sandbox_seccomp:
        log.warning(
            "SANDBOX SYSCALL FILTER OFF (CORRAL_SANDBOX_SECCOMP=false): sandboxes may use io_uring, "
            "the kernel keyring, namespaces and make setuid files in task directories; debugging only"
        )
        return None
    program = build_bpf()
    log.info("sandbox syscall filter built", instructions=len(program) // 8, denied=len(described()))
    return program


def filter_fd(program: bytes) -> int:
    """A pipe's read end holding `program`, for `bwrap --seccomp FD` (bwrap reads it to EOF).
    The program is far below a pipe's buffer, so writing never blocks."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        view = memoryview(program)
        while view:
            view = view[os.write(write_end, view) :]
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return read_end


# The docker driver's first process: installs the program (argv[1], base64) on itself, then
# is the container's init in place of the image's (tini): the rest of argv (the agent) runs in
# a child given the container's stdio, the executor's channel, which pid 1 then lets go of (it
# runs as the steps' uid, dumpable: through /proc/1/fd or /proc/1/mem a step could write into
# it); it reaps orphans and exits as the agent does. The image's python3 and ctypes are all it
# needs. The container runs with no-new-privileges, which an unprivileged process needs to
# install a filter.
LOADER = """\
import _signal, base64, ctypes, os, sys
program = base64.b64decode(sys.argv[1])
class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
libc = ctypes.CDLL(None, use_errno=True)
fprog = SockFprog(len(program) // 8, program)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) or libc.prctl(
    PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0
):
    sys.exit("corral: could not install the sandbox syscall filter: " + os.strerror(ctypes.get_errno()))
agent = os.fork()
if agent == 0:
    os.execv(sys.argv[2], sys.argv[2:])
# No handler of Python's (SIGINT's): a namespace's init then gets no signal from inside.
_signal.signal(_signal.SIGINT, _signal.SIG_DFL)
null = os.open("/dev/null", os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)
os.close(null)
while True:
    pid, status = os.wait()
    if pid == agent:
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
"""


def docker_entrypoint(program: bytes | None, image_entrypoint: list[str]) -> list[str]:
    """The container's entrypoint (its command follows): the image's own, or, when there is a
    filter, the loader, which installs it and is the container's init (see LOADER)."""
    if program is None:
        return image_entrypoint
    encoded = base64.b64encode(program).decode("ascii")
    return ["/usr/bin/python3", "-I", "-S", "-c", LOADER, encoded]


def close_fd(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
