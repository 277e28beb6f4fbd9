"""/openapi.json is a valid OpenAPI document that says exactly what the gateway sends: the JSON
of a real completed task, a real sandbox and real errors validates against the schema each
route declares for that status (additionalProperties false: no undeclared key slips out); a
client generated from it drives a real sandbox; /docs and /redoc render it with no internet."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_stack import CURL_EXAMPLE
from harness import Cluster
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from sse_client import events

Spec = dict[str, Any]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
METHODS = ("get", "post", "put", "patch", "delete", "head", "options")


@pytest.fixture(scope="module")
def spec(full_stack: Cluster) -> Spec:
    response = httpx.get(full_stack.gateway_url + "/openapi.json", timeout=30)
    assert response.status_code == 200
    document: Spec = response.json()
    return document


def operations(spec: Spec) -> list[tuple[str, str, Spec]]:
    return [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def check(spec: Spec, path: str, method: str, response: httpx.Response, schema_of: str = "") -> Any:
    """Validates the response's JSON against what `method path` declares for its status."""
    declared = spec["paths"][path][method]["responses"]
    status = str(response.status_code)
    assert status in declared, f"{method.upper()} {path} returned {status}, declares only {sorted(declared)}"
    body = response.json()
    schema = declared[status]["content"]["application/json"]["schema"]
    # Resolve the #/components/... refs against the document itself.
    OAS31Validator({**schema, "components": spec["components"]}).validate(body)
    return body


def component(spec: Spec, name: str, instance: Any) -> None:
    OAS31Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]}).validate(instance)


def test_the_document_is_valid_openapi(spec: Spec) -> None:
    validate(spec)  # raises, naming the problem, when it is not


def test_operation_ids_are_unique_and_no_default_422(spec: Spec) -> None:
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert {"jupyter_get", "jupyter_post", "jupyter_delete", "cancel_task", "delete_task"} <= set(ids)
    for path, method, op in operations(spec):
        assert "422" not in op["responses"], (method, path)
        if op.get("parameters") or op.get("requestBody"):
            has_query = any(p["in"] in ("query", "header") for p in op.get("parameters", []))
            if has_query or op.get("requestBody"):
                assert "400" in op["responses"], (method, path)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_routes_declare_only_the_errors_they_can_give(spec: Spec) -> None:
    paths = spec["paths"]
    for path, method in [("/v1/tasks", "get"), ("/healthz", "get"), ("/v1/sandboxes", "post"), ("/v1/sandboxes", "get")]:
        assert "404" not in paths[path][method]["responses"], (method, path)
    assert "404" in paths["/status"]["get"]["responses"]
    # A tenant's search in another tenant's task (task_id=...) is 404, as for an unknown one.
    assert "404" in paths["/v1/search"]["get"]["responses"]
    # Every route that forwards the caller's key can be refused it, when keys are required.
    for path, method in [("/v1/tasks", "get"), ("/v1/tasks/{task_id}", "get"), ("/v1/search", "get"),
                         ("/v1/sandboxes", "post"), ("/schedule", "post")]:
        assert "401" in paths[path][method]["responses"], (method, path)
    assert "401" not in paths["/healthz"]["get"]["responses"]
    assert "429" in paths["/schedule"]["post"]["responses"]
    assert "429" in paths["/v1/sandboxes"]["post"]["responses"]
    assert "409" in paths["/v1/tasks/{task_id}/cancel"]["post"]["responses"]
    assert {"401", "403", "404", "409"} <= set(paths["/v1/sandboxes/{sandbox_id}/vnc/"]["get"]["responses"])
    assert "413" in paths["/schedule"]["post"]["responses"]


def test_request_bodies_are_the_real_models(spec: Spec) -> None:
    def body(path: str, method: str) -> Spec:
        declared: Spec = spec["paths"][path][method]["requestBody"]
        return declared

    for path in ("/schedule", "/v1/tasks"):
        assert body(path, "post")["required"] is True
        assert body(path, "post")["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TaskRequest"}
    assert body("/v1/sandboxes", "post")["content"]["application/json"]["schema"]["$ref"].endswith("/SandboxRequest")
    assert body("/v1/sandboxes/{sandbox_id}/extend", "post")["required"] is False
    component(spec, "TaskRequest", CURL_EXAMPLE)
    # GUI steps are a union on `action` inside the union on `tool`, both named components.
    gui = {"steps": [{"tool": "gui", "action": "click", "x": 1, "y": 2}]}
    component(spec, "TaskRequest", gui)
    with pytest.raises(ValidationError):
        component(spec, "TaskRequest", {"steps": [{"tool": "gui", "action": "clik"}]})


def test_states_are_enums(spec: Spec) -> None:
    schemas = spec["components"]["schemas"]
    assert schemas["SandboxView"]["properties"]["status"]["enum"] == ["active", "deleted", "expired", "failed"]
    assert schemas["TaskView"]["properties"]["status"]["enum"] == [
        "scheduled", "running", "completed", "failed", "cancelled"]
    assert "pending" in schemas["StepView"]["properties"]["status"]["enum"]
    assert "host_log_path" not in schemas["TaskView"]["properties"]
    state = next(p for p in spec["paths"]["/v1/tasks"]["get"]["parameters"] if p["name"] == "state")
    assert state["schema"]["enum"] == ["scheduled", "running", "completed", "failed", "cancelled"]


def test_a_real_task_validates_against_what_each_route_declares(spec: Spec, full_api: httpx.Client) -> None:
    scheduled = check(spec, "/schedule", "post", full_api.post("/schedule", json=CURL_EXAMPLE))
    task_id = scheduled["task_id"]
    with full_api.stream("GET", f"/v1/tasks/{task_id}/events") as stream:
        assert stream.status_code == 200
        frames = list(events(stream))
    for frame in frames:
        data = frame.json()
        assert data["type"] == frame.event
        component(spec, "TaskEvent", data)
    assert {f.event for f in frames} >= {"scheduled", "started", "step_started", "output", "step_finished", "finished"}

    status = check(spec, "/status", "get", full_api.get("/status", params={"task_id": task_id}))
    assert status["status"] == "completed"
    # The seed's status document, key for key and in order (the owner's tenant, the network it
    # asked for and the summary listings show come after).
    assert list(status) == ["task_id", "status", "error", "steps", "executor_id", "task_dir", "sandbox_id",
                            "log_path", "created_at", "started_at", "finished_at", "tenant_id", "network",
                            "summary"]
    assert status["tenant_id"] == "local"
    check(spec, "/v1/tasks/{task_id}", "get", full_api.get(f"/v1/tasks/{task_id}"))
    check(spec, "/v1/tasks", "get", full_api.get("/v1/tasks", params={"page_size": 2}))
    check(spec, "/v1/tasks", "post", full_api.post("/v1/tasks", json={"steps": [{"tool": "shell", "command": "true"}]}))
    history = check(spec, "/v1/tasks/{task_id}/history", "get", full_api.get(f"/v1/tasks/{task_id}/history"))
    assert history["events"]
    hits = check(spec, "/v1/search", "get", full_api.get("/v1/search", params={"q": "Hello from", "task_id": task_id}))
    assert hits["hits"]
    check(spec, "/healthz", "get", full_api.get("/healthz"))

    # Errors are declared where they happen, with the error body.
    ended = check(spec, "/v1/tasks/{task_id}/cancel", "post", full_api.post(f"/v1/tasks/{task_id}/cancel"))
    assert ended["error"]["code"] == "failed_precondition"
    check(spec, "/status", "get", full_api.get("/status", params={"task_id": "nope"}))
    check(spec, "/status", "get", full_api.get("/status"))
    invalid = check(spec, "/schedule", "post", full_api.post("/schedule", json={"steps": [{"tool": "shell"}]}))
    assert invalid["error"]["details"] == [{"field": "steps[0].command", "message": "field required"}]
    check(spec, "/v1/tasks", "get", full_api.get("/v1/tasks", params={"state": "sleeping"}))
    check(spec, "/v1/tasks/{task_id}/events", "get", full_api.get(f"/v1/tasks/{task_id}/events",
                                                               headers={"Last-Event-ID": "x"}))


def test_a_real_sandbox_validates_against_what_each_route_declares(spec: Spec, full_api: httpx.Client) -> None:
    created = check(spec, "/v1/sandboxes", "post", full_api.post("/v1/sandboxes", json={"ttl": 600}))
    sandbox_id = created["sandbox_id"]
    assert created["token"] and created["view_token"] and "vnc_url" not in created
    try:
        got = check(spec, "/v1/sandboxes/{sandbox_id}", "get", full_api.get(f"/v1/sandboxes/{sandbox_id}"))
        assert got["status"] == "active" and "token" not in got
        check(spec, "/v1/sandboxes", "get", full_api.get("/v1/sandboxes"))
        check(spec, "/v1/sandboxes/{sandbox_id}/extend", "post", full_api.post(f"/v1/sandboxes/{sandbox_id}/extend"))
        check(spec, "/v1/sandboxes/{sandbox_id}/extend", "post",
              full_api.post(f"/v1/sandboxes/{sandbox_id}/extend", json={"ttl": -1}))
        base = f"/v1/sandboxes/{sandbox_id}"
        no_token = full_api.get(f"{base}/vnc/")
        assert no_token.status_code == 401
        check(spec, "/v1/sandboxes/{sandbox_id}/vnc/", "get", no_token)
        wrong = full_api.get(f"{base}/vnc/", params={"token": "wrong"})
        assert wrong.status_code == 403
        check(spec, "/v1/sandboxes/{sandbox_id}/vnc/", "get", wrong)
        no_desktop = full_api.get(f"{base}/vnc/", params={"token": created["token"]})
        assert no_desktop.status_code == 409
        check(spec, "/v1/sandboxes/{sandbox_id}/vnc/", "get", no_desktop)
        view = full_api.get(f"{base}/jupyter/api/status", params={"token": created["view_token"]})
        assert view.status_code == 403
        check(spec, "/v1/sandboxes/{sandbox_id}/jupyter/{path}", "get", view)
        check(spec, "/v1/sandboxes/{sandbox_id}", "get", full_api.get("/v1/sandboxes/nope"))
        check(spec, "/v1/sandboxes", "post", full_api.post("/v1/sandboxes", json={"ttl": 10**9}))
    finally:
        deleted = check(spec, "/v1/sandboxes/{sandbox_id}", "delete", full_api.delete(f"/v1/sandboxes/{sandbox_id}"))
    assert deleted["status"] == "deleted"
    ended = full_api.get(f"/v1/sandboxes/{sandbox_id}/vnc/", params={"token": created["token"]})
    assert ended.status_code == 409
    check(spec, "/v1/sandboxes/{sandbox_id}/vnc/", "get", ended)


# The client generator's media types for raw bytes (it knows only application/octet-stream).
GENERATOR_CONFIG = """\
post_hooks: []
content_type_overrides:
  application/x-tar: application/octet-stream
  image/png: application/octet-stream
"""


@pytest.mark.timeout(180)
def test_a_generated_client_creates_a_sandbox_and_runs_a_command(
    spec: Spec, full_stack: Cluster, tmp_path: Path
) -> None:
    (tmp_path / "openapi.json").write_text(json.dumps(spec))
    (tmp_path / "config.yml").write_text(GENERATOR_CONFIG)
    generator = Path(sys.executable).with_name("openapi-python-client")
    generated = subprocess.run(
        [str(generator), "generate", "--path", "openapi.json", "--config", "config.yml", "--meta", "none",
         "--output-path", "corral_generated"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    # Every operation generated, each with its typed answers (no "endpoint will not be generated").
    assert "WARNING" not in generated.stdout, generated.stdout
    sys.path.insert(0, str(tmp_path))
    try:
        from corral_generated import Client  # type: ignore[import-not-found]
        from corral_generated.api.sandbox_calls import run_sandbox_command  # type: ignore[import-not-found]
        from corral_generated.api.sandboxes import create_sandbox, delete_sandbox  # type: ignore[import-not-found]
        from corral_generated.models import (  # type: ignore[import-not-found]
            CommandRequest,
            CommandRequestTool,
            CommandResultView,
            SandboxCreated,
            SandboxRequest,
        )

        client = Client(base_url=full_stack.gateway_url, raise_on_unexpected_status=True, timeout=httpx.Timeout(120))
        created = create_sandbox.sync(client=client, body=SandboxRequest(desktop=False, ttl=600))
        assert isinstance(created, SandboxCreated), created
        try:
            ran = run_sandbox_command.sync(
                created.sandbox_id, client=client,
                body=CommandRequest(tool=CommandRequestTool.SHELL, command="echo generated; exit 3"),
            )
            assert isinstance(ran, CommandResultView), ran
            assert (ran.stdout, ran.exit_code, ran.timed_out) == ("generated\n", 3, False)
        finally:
            deleted = delete_sandbox.sync(created.sandbox_id, client=client)
        assert deleted is not None and deleted.status.value == "deleted"
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "corral_generated"]:
            del sys.modules[name]


@pytest.mark.timeout(240)
def test_docs_and_redoc_render_the_operations_offline(full_stack: Cluster) -> None:
    """In a real Chromium with every request off the gateway refused (no internet, no CDN)."""
    from playwright.sync_api import Route, sync_playwright

    if shutil.which(CHROMIUM) is None:
        pytest.fail("chromium is missing (scripts/bootstrap installs Debian's chromium)")
    elsewhere: list[str] = []

    def only_the_gateway(route: Route) -> None:
        if route.request.url.startswith((full_stack.gateway_url, "blob:", "data:")):
            route.continue_()
            return
        # ReDoc's footer links its "Redocly" logo from its CDN: an image, nothing the page needs.
        if route.request.resource_type != "image":
            elsewhere.append(route.request.url)
        route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.route("**/*", only_the_gateway)
            page.goto(full_stack.gateway_url + "/docs")
            page.wait_for_selector(".opblock-summary", timeout=150_000)
            paths = [p.replace("\u200b", "") for p in page.locator(".opblock-summary-path").all_inner_texts()]
            assert "/v1/sandboxes/{sandbox_id}/contexts/{context_id}/run" in paths and len(paths) >= 40, paths
            page.goto(full_stack.gateway_url + "/redoc")
            # Every operation is a section of the page (the menu's groups start collapsed).
            page.get_by_text("Run code in a code context").first.wait_for(state="attached", timeout=150_000)
            assert page.locator("[data-section-id*='operation/']").count() >= 40
            assert page.locator("h2", has_text="Schedule a task").first.is_visible()
        finally:
            browser.close()
    assert not elsewhere, elsewhere
