"""The issue's agent script, as written, against a real embedded Corral (both drivers): create
a desktop sandbox, run a command, write and run a file, screenshot as bytes, click, type,
press keys, stream a command's output, clean up."""

from __future__ import annotations

from harness import Cluster

from corral import Sandbox


def test_the_agent_script_runs_as_written(desktop_stack: Cluster) -> None:
    url = desktop_stack.gateway_url
    with Sandbox.create(desktop=True, ttl=3600, url=url) as sb:
        r = sb.run_shell("python3 --version")
        sb.write_file("app.py", "print(6 * 7)")
        printed = sb.run_python("exec(open('app.py').read())").stdout
        png = sb.screenshot()
        sb.run_shell("xterm -T sdk-term >/dev/null 2>&1 &")
        sb.desktop("wait_window", text="sdk-term", timeout=60)
        sb.click(100, 100)
        sb.type("hello\n")
        sb.key("ctrl+s")
        chunks = list(sb.run_shell("for i in 1 2 3; do echo line $i; sleep 0.2; done", stream=True))
        sandbox_id = sb.id
    assert r.ok and r.stdout.startswith("Python 3"), r
    assert printed == "42\n"
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "".join(c.text for c in chunks if c.stream == "stdout") == "line 1\nline 2\nline 3\n"
    # The with-block deleted it.
    assert Sandbox.connect(sandbox_id, url=url).info["status"] == "deleted"
