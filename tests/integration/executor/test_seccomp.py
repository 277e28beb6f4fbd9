"""The sandbox syscall filter (services/executor/drivers/seccomp.py), attacked from real steps
on both drivers: each denied class of call is refused with its errno, setuid/setgid files and
devices cannot be made in the task directory, and ordinary workloads still run."""

from __future__ import annotations

import json
import os
import platform
import stat

import pytest

from .conftest import ExecutorClient

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers below are x86_64's")

# Each call with arguments that would reach the kernel (and fail harmlessly or succeed) were
# it not filtered; prints {name: errno name, or "ok"}.
PROBE = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps({
    "io_uring_setup": call(425, 1, 0),
    "io_uring_enter": call(426, -1, 0, 0, 0, 0, 0),
    "io_uring_register": call(427, -1, 0, 0, 0),
    "keyctl": call(250, 0, -1, 0),          # KEYCTL_GET_KEYRING_ID of the thread keyring
    "add_key": call(248, 0, 0, 0, 0, 0),
    "request_key": call(249, 0, 0, 0, 0),
    "unshare": call(272, 0x10000000),      # CLONE_NEWUSER
    "clone_newuser": call(56, 0x10000000 | 17, 0, 0, 0, 0),
    "clone3": call(435, 0, 0),
    "setns": call(308, -1, 0),
    "mount": call(165, 0, 0, 0, 0, 0),
    "open_tree": call(428, -1, 0, 0),
    "fsopen": call(430, 0, 0),
    "bpf": call(321, 0, 0, 0),
    "perf_event_open": call(298, 0, 0, -1, -1, 0),
    "userfaultfd": call(323, 0),
    "kcmp": call(312, os.getpid(), os.getpid(), 0, 0, 0),
    "process_vm_readv": call(310, os.getpid(), 0, 0, 0, 0, 0),
    "get_mempolicy": call(239, 0, 0, 0, 0, 0),
    "name_to_handle_at": call(303, -100, 0, 0, 0, 0),
    "personality_addr_no_randomize": call(135, 0x0040000),
    "personality_query": call(135, 0xFFFFFFFF),
    "openat2": call(437, -100, 0, 0, 0),
    "quotactl": call(179, 0, 0, 0, 0),
    # PTRACE_SEIZE (does not stop the tracee, so an unfiltered run does not hang the sandbox).
    "ptrace_init": call(101, 0x4206, 1, 0, 0),
}))
"""

EXPECTED = {
    "io_uring_setup": "ENOSYS", "io_uring_enter": "ENOSYS", "io_uring_register": "ENOSYS",
    "keyctl": "EPERM", "add_key": "EPERM", "request_key": "EPERM",
    "unshare": "EPERM", "clone_newuser": "EPERM", "clone3": "ENOSYS", "setns": "EPERM",
    "mount": "EPERM", "open_tree": "EPERM", "fsopen": "EPERM",
    "bpf": "EPERM", "perf_event_open": "EPERM", "userfaultfd": "EPERM", "kcmp": "EPERM",
    "process_vm_readv": "EPERM", "get_mempolicy": "EPERM", "name_to_handle_at": "EPERM",
    "personality_addr_no_randomize": "EPERM", "personality_query": "ok",
    "openat2": "ENOSYS", "quotactl": "EPERM", "ptrace_init": "EPERM",
}  # fmt: skip


async def test_denied_calls_are_refused_from_a_step(executor: ExecutorClient) -> None:
    _, outcome = await executor.run_steps(
        [
            {"tool": "python", "code": PROBE},
            {"tool": "shell", "command": "unshare --user --map-root-user true", "continue_on_error": True},
            {"tool": "shell", "command": "grep -E '^Seccomp:' /proc/self/status /proc/1/status"},
        ]
    )
    assert outcome.step_state(0) == "STEP_STATE_COMPLETED", outcome.step(0).stderr
    assert json.loads(outcome.step(0).stdout) == EXPECTED
    assert outcome.step(1).exit_code != 0
    assert "Operation not permitted" in outcome.step(1).stderr
    # Every process has a filter, the sandbox's init included (bwrap's, or tini).
    assert outcome.step(2).stdout.count("\t2\n") == 2, outcome.step(2).stdout


SETUID = r"""
import errno, os, stat
def attempt(what, action):
    try:
        action()
        print(what, "ok")
    except OSError as exc:
        print(what, errno.errorcode[exc.errno])
open("plain", "w").close()
os.mkdir("dir")
attempt("chmod-setuid", lambda: os.chmod("plain", 0o4755))
attempt("chmod-setgid", lambda: os.chmod("plain", 0o2755))
attempt("chmod-setgid-dir", lambda: os.chmod("dir", 0o2775))
attempt("fchmod-setuid", lambda: os.fchmod(os.open("plain", os.O_RDONLY), 0o4700))
attempt("open-setuid", lambda: os.close(os.open("made-setuid", os.O_CREAT | os.O_WRONLY, 0o4755)))
attempt("open-setgid", lambda: os.close(os.open("made-setgid", os.O_CREAT | os.O_WRONLY, 0o2755)))
attempt("mknod-setuid", lambda: os.mknod("node-setuid", stat.S_IFREG | 0o4755))
attempt("mknod-device", lambda: os.mknod("null", stat.S_IFCHR | 0o666, os.makedev(1, 3)))
# What stays allowed: ordinary modes, files and FIFOs.
attempt("chmod-plain", lambda: os.chmod("plain", 0o755))
attempt("open-plain", lambda: os.close(os.open("made-plain", os.O_CREAT | os.O_WRONLY, 0o644)))
attempt("mknod-fifo", lambda: os.mknod("fifo", stat.S_IFIFO | 0o600))
"""


async def test_no_setuid_setgid_file_or_device_in_the_task_directory(executor: ExecutorClient) -> None:
    task_id, outcome = await executor.run_steps(
        [
            {"tool": "python", "code": SETUID},
            {"tool": "shell", "command": "touch sh-made && chmod u+s sh-made", "continue_on_error": True},
        ]
    )
    assert outcome.step_state(0) == "STEP_STATE_COMPLETED", outcome.step(0).stderr
    results = dict(line.split() for line in outcome.step(0).stdout.splitlines())
    assert results == {
        "chmod-setuid": "EPERM", "chmod-setgid": "EPERM", "chmod-setgid-dir": "EPERM",
        "fchmod-setuid": "EPERM", "open-setuid": "EPERM", "open-setgid": "EPERM",
        "mknod-setuid": "EPERM", "mknod-device": "EPERM",
        "chmod-plain": "ok", "open-plain": "ok", "mknod-fifo": "ok",
    }  # fmt: skip
    assert outcome.step(1).exit_code != 0
    assert "Operation not permitted" in outcome.step(1).stderr
    # And on the host, where the task directory lives: nothing setuid, setgid or a device.
    for root, dirs, files in os.walk(executor.host_task_dir(task_id)):
        for name in dirs + files:
            mode = os.lstat(os.path.join(root, name)).st_mode
            assert not mode & (stat.S_ISUID | stat.S_ISGID), (name, oct(mode))
            assert not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)), (name, oct(mode))


THREADS_AND_SUBPROCESSES = """
import concurrent.futures, subprocess, sys
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    squares = list(pool.map(lambda n: n * n, range(8)))
child = subprocess.run([sys.executable, "-c", "print('child')"], capture_output=True, text=True, check=True)
print(sum(squares), child.stdout.strip())
"""


async def test_ordinary_workloads_run_under_the_filter(executor: ExecutorClient) -> None:
    _, outcome = await executor.run_steps(
        [
            {"tool": "python", "code": THREADS_AND_SUBPROCESSES},
            {
                "tool": "typescript",
                "code": "const xs: number[] = [3, 1, 2];\nconsole.log(xs.sort().join(','));",
            },
            {"tool": "shell", "command": "seq 1000 | sort -rn | head -3 | tr '\\n' ' '; echo"},
            {"tool": "shell", "command": "(sleep 0.1 & wait) && touch f && chmod 0755 f && stat -c %a f"},
            {"tool": "shell", "command": "mkfifo p && echo fifo-ok"},
        ]
    )
    assert outcome.state == "TASK_STATE_COMPLETED", [(s.stderr, s.error) for s in outcome.steps]
    assert outcome.step(0).stdout == "140 child\n"
    assert outcome.step(1).stdout == "1,2,3\n"
    assert outcome.step(2).stdout == "1000 999 998 \n"
    assert outcome.step(3).stdout == "755\n"
    assert outcome.step(4).stdout == "fifo-ok\n"
