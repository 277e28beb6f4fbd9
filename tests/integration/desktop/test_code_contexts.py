"""Code contexts through the SDK, on both drivers: a Jupyter kernel in the sandbox keeps its
variables between runs and answers with E2B's shapes (logs, rich results, the error); a
matplotlib plot comes back as a PNG. And a Python command's prints arrive as they happen."""

from __future__ import annotations

import base64

import httpx
import pytest
from harness import Cluster

from corral import Sandbox, errors

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT = """
import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [x * x for x in (1, 2, 3)])
plt.title("squares")
plt.show()
"""


@pytest.mark.timeout(240)
def test_a_context_keeps_variables_and_returns_rich_results(desktop_stack: Cluster) -> None:
    with Sandbox.create(url=desktop_stack.gateway_url, ttl=600) as sb:
        context = sb.create_code_context()
        assert context.language == "python" and context.cwd == "/workspace"

        assert sb.run_code("x = 41\nprint('set')", context=context).logs.stdout == ["set\n"]
        kept = sb.run_code("x + 1", context=context)
        assert kept.error is None and kept.text == "42" and kept.results[0].is_main_result

        plot = sb.run_code(PLOT, context=context)
        assert plot.error is None, plot.error
        [figure] = plot.results
        assert figure.png is not None and base64.b64decode(figure.png).startswith(PNG_MAGIC)
        assert "png" in figure.formats() and not figure.is_main_result

        rich = sb.run_code(
            "from IPython.display import HTML, JSON, display\n"
            "display(HTML('<b>bold</b>')); display(JSON({'a': [1, 2]}))\n"
            "import sys; print('warn', file=sys.stderr)",
            context=context,
        )
        assert rich.results[0].html == "<b>bold</b>"
        assert rich.results[1].json == {"a": [1, 2]}
        assert rich.logs.stderr == ["warn\n"]

        failed = sb.run_code("1 / 0", context=context)
        assert failed.error is not None and failed.error.name == "ZeroDivisionError"
        assert failed.error.value == "division by zero" and "1 / 0" in failed.error.traceback
        assert "\x1b[" not in failed.error.traceback  # plain text, no terminal colours

        # Interrupted at its timeout, the context lives on with its variables.
        slow = sb.run_code("import time\ntime.sleep(60)", context=context, timeout=1)
        assert slow.error is not None and slow.error.name == "TimeoutError"
        assert sb.run_code("x", context=context).text == "41"

        # Contexts are separate kernels; the default one is made on first use and kept.
        assert sb.run_code("'x' in globals()").text == "False"
        assert sb.run_code("y = 1").error is None and sb.run_code("y").text == "1"

        sb.remove_code_context(context)
        with pytest.raises(errors.NotFound, match="unknown code context"):
            sb.run_code("x", context=context)
        with pytest.raises(errors.NotFound):
            sb.run_code("x", context="../../etc")


def test_bad_context_requests_are_named(api: httpx.Client) -> None:
    created = api.post("/v1/sandboxes", json={"ttl": 300}).json()
    base = f"/v1/sandboxes/{created['sandbox_id']}/contexts"
    try:
        wrong = api.post(base, json={"language": "cobol"})
        assert wrong.status_code == 400 and wrong.json()["error"]["details"][0]["field"] == "language"
        no_code = api.post(f"{base}/{'0' * 32}/run", json={})
        assert no_code.status_code == 400 and "code: field required" in no_code.json()["error"]["message"]
        unknown = api.post(f"{base}/{'0' * 32}/run", json={"code": "1"})
        assert unknown.status_code == 404, unknown.text
        assert api.delete(f"{base}/{'0' * 32}").status_code == 404
    finally:
        api.delete(f"/v1/sandboxes/{created['sandbox_id']}")
    assert api.post("/v1/sandboxes/nope/contexts").status_code == 404


@pytest.mark.timeout(120)
def test_python_prints_arrive_as_they_happen(desktop_stack: Cluster) -> None:
    """The command prints, then waits for a file only the test writes once it has seen that
    print: buffered until exit (no PYTHONUNBUFFERED), the print would come after the wait."""
    code = (
        "import os, time\n"
        "print('waiting')\n"
        "for _ in range(300):\n"
        "    if os.path.exists('go'):\n"
        "        break\n"
        "    time.sleep(0.1)\n"
        "print('went' if os.path.exists('go') else 'gave up')\n"
    )
    with Sandbox.create(url=desktop_stack.gateway_url, ttl=300) as sb:
        seen: list[str] = []

        def on_stdout(text: str) -> None:
            seen.append(text)
            if text.startswith("waiting"):
                sb.write_file("go", "")

        result = sb.run_python(code, on_stdout=on_stdout)
        assert result.ok, result
        assert "".join(seen) == "waiting\nwent\n"
