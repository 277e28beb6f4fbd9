"""The app's /openapi.json: FastAPI's, plus the request bodies the routes read themselves
(gateway/body.py) and the SSE event documents, minus FastAPI's default 422 (the gateway
answers bad input with 400 and its own error body, which each route declares)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from pydantic.json_schema import models_json_schema

from corral.views import TaskEventView
from gateway.body import BODY_MODELS

REF_TEMPLATE = "#/components/schemas/{model}"
FASTAPI_422_SCHEMAS = ("HTTPValidationError", "ValidationError")


def operation_id(route: APIRoute) -> str:
    """Operation ids are the routes' names (unique: test_openapi checks)."""
    return route.name


def _component_name(tag: str, property_name: str) -> str:
    """('gui', 'tool') -> 'GuiStep'; ('x_y', 'kind') -> 'XYKind'."""
    suffix = "Step" if property_name == "tool" else property_name.capitalize()
    return "".join(part.capitalize() for part in tag.split("_")) + suffix


def name_nested_unions(node: Any, components: dict[str, Any]) -> None:
    """A discriminated union inside another (a step's `tool`, then a gui step's `action`) comes
    out of pydantic inline, as a mapping value that is a schema; OpenAPI wants a reference
    there. Each such union becomes a component of its own, referenced from both places."""
    if isinstance(node, list):
        for item in node:
            name_nested_unions(item, components)
        return
    if not isinstance(node, dict):
        return
    discriminator = node.get("discriminator")
    if isinstance(discriminator, dict):
        mapping = discriminator.get("mapping", {})
        for tag, target in list(mapping.items()):
            if isinstance(target, str):
                continue
            name = _component_name(tag, str(discriminator.get("propertyName", "")))
            while components.get(name, target) != target:
                name += "Union"
            ref = REF_TEMPLATE.format(model=name)
            components[name] = target
            mapping[tag] = ref
            node["oneOf"] = [{"$ref": ref} if option == target else option for option in node.get("oneOf", [])]
    for value in list(node.values()):
        name_nested_unions(value, components)


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in FASTAPI_422_SCHEMAS:
        components.pop(name, None)
    models = list(dict.fromkeys(BODY_MODELS))
    _, definitions = models_json_schema([(m, "validation") for m in models], ref_template=REF_TEMPLATE)
    components.update(definitions.get("$defs", {}))
    events = TypeAdapter(TaskEventView).json_schema(mode="serialization", ref_template=REF_TEMPLATE)
    components.update(events.pop("$defs", {}))
    components["TaskEvent"] = events
    name_nested_unions(schema, components)
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
