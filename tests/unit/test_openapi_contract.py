"""/openapi.json as the contract, checked for every route the app has (new routers' too):
unique operation ids, a real schema for every body it sends and reads,
the bodies a route parses itself declared, examples that fit their schemas, 400 not 422."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute
from openapi_schema_validator import OAS31Validator

from corral.config import Settings
from corral.steps.gui import ACTIONS as GUI_ACTIONS
from gateway.app import create_app
from gateway.body import JsonBody

Spec = dict[str, Any]
METHODS = ("get", "post", "put", "patch", "delete", "head", "options")
APP = create_app(Settings())


@pytest.fixture(scope="module")
def spec() -> Spec:
    return APP.openapi()


def operations(spec: Spec) -> list[tuple[str, str, Spec]]:
    return [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items() if method in METHODS]


def resolves(spec: Spec, schema: Spec, instance: Any) -> None:
    OAS31Validator({**schema, "components": spec["components"]}).validate(instance)


def test_operation_ids_are_unique(spec: Spec) -> None:
    # (tests/integration/gateway/test_openapi.py validates the served document as a whole.)
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_every_body_sent_has_a_schema(spec: Spec) -> None:
    untyped = []
    for path, method, op in operations(spec):
        for status, response in op["responses"].items():
            for media, content in response.get("content", {}).items():
                if content.get("schema") in (None, {}):
                    untyped.append(f"{method.upper()} {path} {status} {media}")
    assert not untyped, untyped


def test_bodies_the_routes_read_are_declared_with_examples_that_fit(spec: Spec) -> None:
    for route in APP.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        bodies = [d.call for d in route.dependant.dependencies if isinstance(d.call, JsonBody)]
        for method in route.methods:
            op = spec["paths"][route.path_format][method.lower()]
            assert "422" not in op["responses"], (method, route.path)
            if op.get("requestBody") or any(p["in"] == "query" for p in op.get("parameters", [])):
                assert "400" in op["responses"], (method, route.path)
            for body in bodies:
                media = op["requestBody"]["content"]["application/json"]
                assert media["schema"] == {"$ref": f"#/components/schemas/{body.model.__name__}"}, route.path
                assert "example" in media, f"{method} {route.path}: no example"
                resolves(spec, media["schema"], media["example"])
                body.model.model_validate(media["example"])
    for _, _, op in operations(spec):
        for media in op.get("requestBody", {}).get("content", {}).values():
            if "example" in media:
                resolves(spec, media["schema"], media["example"])
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_gui_actions_and_states_are_enums(spec: Spec) -> None:
    body = spec["paths"]["/v1/sandboxes/{sandbox_id}/desktop/actions"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/GuiStep"}
    schemas = spec["components"]["schemas"]
    assert set(schemas["GuiStep"]["discriminator"]["mapping"]) == set(GUI_ACTIONS)
    resolves(spec, body["schema"], body["example"])
    assert schemas["CommandStatusView"]["properties"]["state"]["enum"] == ["running", "exited"]
    assert schemas["FileInfoView"]["properties"]["type"]["enum"] == ["file", "directory", "symlink", "other"]
    assert schemas["SandboxView"]["properties"]["status"]["enum"] == ["active", "deleted", "expired", "failed"]


def test_docs_pages_load_their_assets_from_the_gateway() -> None:
    from fastapi.testclient import TestClient

    # No lifespan (these pages need no service); a loopback Host, as the guard wants.
    client = TestClient(APP, base_url="http://localhost")
    for page, asset in (("/docs", "/static-offline-docs/swagger-ui-bundle.js"), ("/redoc", "/static-offline-docs/redoc.standalone.js")):
        reply = client.get(page)
        assert reply.status_code == 200 and asset in reply.text, page
        assert "cdn." not in reply.text and "https://" not in reply.text, page
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static-offline-docs/redoc.standalone.js").status_code == 200
