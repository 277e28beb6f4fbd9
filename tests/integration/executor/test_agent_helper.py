"""The compiled agent's Python helper (sandbox/runtime/agent.py, which it starts for the requests
it hands over, such as file operations) starts while the task's steps run, as their uid. A step
waiting for it tries to get hold of it at once, before the interpreter is up and has made itself
undumpable: its memory (code injection), its channel to the agent (forged replies). Both must
be refused from its first instant on, on every driver; and a helper a step kills is replaced."""

from __future__ import annotations

import pytest

from .conftest import ExecutorClient, gvisor_skip
from .test_sandbox_init import GVISOR_PROC

# A background watcher: the processes started after it, their memory opened the moment they
# appear (a tight loop: the window it looks for is the helper's first milliseconds); one that
# runs the Python agent (the helper; the compiled agent itself is /app/corral-agent) is reported.
WATCH = r"""
import os, time
me, seen, report, first = os.getpid(), set(), set(), None
open("watching", "w").close()
def is_helper(pid):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return False
    return b"/app/agent.py" in argv and not argv[0].endswith(b"corral-agent")
deadline = time.monotonic() + 8
while time.monotonic() < deadline and (first is None or time.monotonic() < first + 1):
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) > me]:
        try:
            os.close(os.open(f"/proc/{pid}/mem", os.O_RDWR))
            opened = True
        except FileNotFoundError:
            continue
        except OSError:
            opened = False
        if not is_helper(pid):
            continue
        first = first or time.monotonic()
        seen.add(pid)
        report.add("mem OPENED" if opened else "mem refused")
        for target, mode in (("fd/0", os.O_RDONLY), ("fd/1", os.O_WRONLY)):
            try:
                os.close(os.open(f"/proc/{pid}/{target}", mode))
                report.add(f"{target} OPENED")
            except OSError:
                report.add(f"{target} refused")
with open("watch.log", "w") as f:
    f.write(f"helpers seen: {len(seen)}\n" + "\n".join(sorted(report)) + "\n")
"""


@pytest.mark.timeout(120)
async def test_a_step_cannot_reach_into_the_helper_as_it_starts(executor: ExecutorClient) -> None:
    gvisor_skip(executor.driver, GVISOR_PROC)
    _, outcome = await executor.run_steps(
        [
            {"tool": "write_file", "path": "watch.py", "content": WATCH},
            # (write_file started a helper: it is killed, so that the read below starts another)
            # (anchored: the pattern must not match this shell's own command line)
            {"tool": "shell", "command": "pkill -KILL -f '^/[a-z/-]*python3 -I -S -c'; "
             "python3 watch.py >/dev/null 2>&1 & while [ ! -e watching ]; do sleep 0.01; done; echo watching"},
            {"tool": "read_file", "path": "watch.py"},
            {"tool": "shell", "command": "while [ ! -e watch.log ]; do sleep 0.05; done; cat watch.log"},
        ]
    )
    assert outcome.state == "TASK_STATE_COMPLETED", outcome.finished
    assert outcome.step(2).stdout == WATCH  # the helper killed by the step was replaced
    report = outcome.step(3).stdout
    assert report.startswith("helpers seen: 1\n"), report
    assert "OPENED" not in report and "mem refused" in report and "fd/1 refused" in report, report
