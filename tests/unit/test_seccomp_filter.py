"""The sandbox syscall filter module: it builds with this machine's libseccomp, lists what it
denies (Docker's documented dangerous calls, io_uring, setuid/setgid files), and the program
really refuses them once installed (by the docker driver's loader, in a child process)."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corral.config import Settings
from services.executor.drivers import seccomp
from services.executor.drivers.base import SandboxError
from services.executor.drivers.bubblewrap import BubblewrapDriver

# Docker's documented "significant syscalls blocked by the default profile", plus io_uring.
DOCKER_DOCUMENTED = {
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
    "finit_module", "get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount", "move_pages",
    "name_to_handle_at", "nfsservctl", "open_by_handle_at", "perf_event_open", "pivot_root",
    "process_vm_readv", "process_vm_writev", "query_module", "quotactl", "reboot", "request_key",
    "set_mempolicy", "setns", "settimeofday", "stime", "swapon", "swapoff", "sysfs", "_sysctl",
    "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vm86", "vm86old",
    "fsopen", "fsmount", "fsconfig", "move_mount", "open_tree",
}  # fmt: skip
IO_URING = {"io_uring_setup", "io_uring_enter", "io_uring_register"}


def test_denies_at_least_dockers_documented_list_and_io_uring() -> None:
    refused = set(seccomp.DENIED) | set(seccomp.DENIED_ENOSYS)
    assert DOCKER_DOCUMENTED - refused == set()
    assert IO_URING <= set(seccomp.DENIED_ENOSYS)
    assert "ptrace" not in refused  # allowed, as in Docker (strace, gdb)
    lines = seccomp.described()
    assert "keyctl: EPERM" in lines and "io_uring_setup: ENOSYS" in lines
    assert "chmod with S_ISUID or S_ISGID: EPERM" in lines
    assert "ptrace of pid 1 (the sandbox's init): EPERM" in lines
    conditional = {rule.syscall for rule in seccomp.conditional_rules()}
    setuid_makers = {
        "chmod",
        "fchmod",
        "fchmodat",
        "fchmodat2",
        "open",
        "openat",
        "creat",
        "mknod",
        "mknodat",
    }
    assert setuid_makers <= conditional


def test_builds_a_bpf_program() -> None:
    program = seccomp.build_bpf()
    assert len(program) % 8 == 0  # struct sock_filter[]
    assert 0 < len(program) // 8 < 4096  # the kernel's BPF_MAXINSNS


def test_disabled_by_setting_builds_nothing() -> None:
    assert seccomp.sandbox_filter(Settings(sandbox_seccomp=False)) is None


CHECKS = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]
def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
os.chdir(sys.argv[1])
open("f", "w").close()
print(json.dumps({
    "keyctl": call(250, 0, -1, 0),
    "io_uring_setup": call(425, 1, 0),
    "chmod_setuid": attempt(lambda: os.chmod("f", 0o4755)),
    "open_setgid": attempt(lambda: os.open("g", os.O_CREAT | os.O_WRONLY, 0o2755)),
    "chmod_plain": attempt(lambda: os.chmod("f", 0o700)),
    "personality_query": call(135, 0xFFFFFFFF),
    "personality_linux32": call(135, 0x0008),
}))
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86_64's")
def test_the_docker_loader_installs_the_program(tmp_path: Path) -> None:
    """What the docker driver's first process does, here in a child: the filter is installed
    and the calls it denies are refused; then the checks run as the exec'd command."""
    argv = [*seccomp.docker_entrypoint(seccomp.build_bpf(), []), sys.executable, "-I", "-c", CHECKS, str(tmp_path)]
    argv[0] = sys.executable  # the image's python3 is /usr/bin/python3; any python3 works here
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(result.stdout) == {
        "keyctl": "EPERM",
        "io_uring_setup": "ENOSYS",
        "chmod_setuid": "EPERM",
        "open_setgid": "EPERM",
        "chmod_plain": "ok",
        "personality_query": "ok",
        "personality_linux32": "ok",
    }


def test_bubblewrap_refuses_to_start_without_pyseccomp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # what `import pyseccomp` sees when it is missing
    with pytest.raises(
        SandboxError, match=r"needs the `pyseccomp` Python package.*CORRAL_SANDBOX_SECCOMP=false"
    ):
        BubblewrapDriver(Settings(data_dir=tmp_path))
    # Turned off explicitly, it starts (and has no filter to install).
    assert BubblewrapDriver(Settings(data_dir=tmp_path, sandbox_seccomp=False)).syscall_filter is None
