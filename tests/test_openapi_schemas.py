"""The OpenAPI document describes the real answers (issue: "real schemas for every JSON twin").

For every golden JSON twin (``tests/golden/*.json``, real answers of the app, see
``tests/test_golden_json.py``) the schema the document declares for that route must validate the
body (JSON Schema 2020-12 through jsonschema_rs, which schemathesis uses) and must *name* every key present,
recursively through objects and array items: an open object does not count as describing a key;
only a declared map (``additionalProperties`` with a schema, e.g. class name → probability) does.
The live twins that have no golden (analysis, search, typographic lab, feature-visualization
POST) are checked the same way on answers computed with the demo model (slow). Media types: HTML
pages declare only ``text/html``, the atlas sprite ``image/jpeg``, POST bodies are declared.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs
import pytest

from app.config import Settings
from app.web.app import create_app
from tests.test_golden_json import REQUESTS

GOLDEN = Path(__file__).parent / "golden"
NEURON = "/models/{model}/layers/{layer}/neurons/{unit}"


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("openapi") / "empty.db"  # the document needs no index, only a file
    path.touch()
    return create_app(Settings(db_url=f"sqlite:///{path}")).openapi()


def route_of(spec: dict[str, Any], url: str) -> str:
    """The documented path template that serves ``url`` (literal segments before parameters)."""
    path = urlsplit(url).path
    found = []
    for template in spec["paths"]:
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            found.append(template)
    assert found, f"no documented route serves {url}"
    return min(found, key=lambda t: (t.count("{"), -len(t)))


def response_schema(spec: dict[str, Any], route: str, status: int, method: str = "get") -> dict[str, Any]:
    responses = spec["paths"][route][method]["responses"]
    answer = responses.get(str(status)) or responses["default"]
    return answer["content"]["application/json"]["schema"]


def undeclared(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Keys of ``value`` (recursively) that ``schema`` does not name, and values it rejects."""
    if schema == {}:  # the values of a declared free-form map (settings, metadata): anything
        return []
    if "anyOf" in schema:
        fits = [s for s in schema["anyOf"] if jsonschema_rs.Draft202012Validator(s).is_valid(value)]
        if not fits:
            return [f"{where}: {json.dumps(value)[:120]} fits no branch"]
        return min((undeclared(value, s, where) for s in fits), key=len)
    if isinstance(value, dict):
        problems = []
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                problems += undeclared(item, properties[key], f"{where}.{key}")
            elif isinstance(extra, dict):  # a declared map: its values are typed
                problems += undeclared(item, extra, f"{where}.{key}")
            else:
                problems.append(f"{where}.{key}: not declared")
        return problems
    if isinstance(value, list):
        prefix = schema.get("prefixItems", [])
        problems = []
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items", {})
            if isinstance(sub, dict):
                problems += undeclared(item, sub, f"{where}[]")
        return sorted(set(problems))
    return []


def check(spec: dict[str, Any], url: str, status: int, body: Any, method: str = "get") -> None:
    route = route_of(spec, url)
    schema = response_schema(spec, route, status, method)
    errors = [e.message[:200] for e in jsonschema_rs.Draft202012Validator(schema).iter_errors(body)]
    assert not errors, f"{method.upper()} {url} ({route}): {errors[:5]}"
    if status < 400:  # an error's schema is anyOf(Error, the page's data): the Error branch
        problems = undeclared(body, schema)
        assert not problems, f"{method.upper()} {url} ({route}): " + "\n".join(problems[:30])


def revive(value: Any) -> Any:
    """The golden with its host-dependent placeholders (``"<float>"``, ``"<int>"``: see
    ``tests/test_golden_json.VOLATILE``) turned back into values of their type."""
    if isinstance(value, dict):
        return {k: revive(v) for k, v in value.items()}
    if isinstance(value, list):
        return [revive(v) for v in value]
    return {"<float>": 0.5, "<int>": 1}.get(value, value) if isinstance(value, str) else value


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_golden_twin_fits_its_declared_schema(spec: dict[str, Any], name: str) -> None:
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    check(spec, golden["request"], golden["status"], revive(golden["body"]))


def test_the_check_can_fail() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "object"}}}}
    assert undeclared({"a": [{"b": 1}]}, schema) == ["$.a[].b: not declared"]
    assert undeclared({"c": 1}, {"type": "object", "additionalProperties": {"type": "integer"}}) == []
    assert undeclared({"c": 1}, {"anyOf": [{"type": "string"}]}) == ['$: {"c": 1} fits no branch']


def test_media_types(spec: dict[str, Any]) -> None:
    paths = spec["paths"]

    def ok_types(path: str, method: str = "get") -> list[str]:
        return list(paths[path][method]["responses"]["200"]["content"])

    pages = ("/", "/models/{model}", "/models/{model}/layers/{layer}", NEURON, "/search", "/analyze",
             "/analyses/{the_id}", "/models/{model}/layers/{layer}/atlas", "/lists", "/compare")  # fmt: skip
    for page in pages:
        assert ok_types(page) == ["text/html"], page
    assert ok_types("/models/{model}/layers/{layer}/atlas.jpg") == ["image/jpeg"]
    sprite = paths["/models/{model}/layers/{layer}/atlas.jpg"]["get"]["responses"]["200"]["content"]
    assert sprite["image/jpeg"]["schema"] == {"type": "string", "format": "binary"}
    assert ok_types("/preview/analyses/{name}.png") == ["image/png"]
    assert set(ok_types("/blobs/{name}")) == {"image/jpeg", "image/png", "image/webp"}
    assert "text/csv" in ok_types("/models/{model}/export/{name}")
    for path, ops in paths.items():
        for method in ops:
            is_json = path.endswith(".json") or path in ("/-/health", "/-/oembed")
            assert (ok_types(path, method) == ["application/json"]) == is_json, (path, method)
    bodies = {p: paths[p]["post"]["requestBody"]["content"] for p in paths if "post" in paths[p]}
    assert set(bodies["/analyze.json"]) >= {"multipart/form-data", "image/jpeg"}
    assert NEURON + "/featurevis" in bodies and NEURON + "/featurevis.json" in bodies
    header = [p for p in paths[NEURON + "/featurevis"]["post"]["parameters"] if p["in"] == "header"]
    assert header[0]["name"] == "X-CSRF-Token" and header[0]["required"]


@pytest.mark.slow
def test_live_twins_fit_their_declared_schemas(spec, tiny_db, demo_loaded, tmp_path) -> None:
    """Analysis, search, typographic lab and feature-visualization POST, computed live."""
    from tests.live_support import copy_db, live_server

    url = copy_db(tiny_db.path, tmp_path)  # POSTs store rows
    with live_server(url, demo_loaded) as (base, _runner, _app):
        import httpx

        with httpx.Client(base_url=base, timeout=120) as client:
            form = {"example": (None, "1"), "classes": (None, "cat, dog")}
            posted = client.post("/analyze.json", files=form)
            assert posted.status_code == 200, posted.text[:300]
            check(spec, "/analyze.json", 200, posted.json(), "post")
            the_id = posted.json()["id"]
            gets = [f"/analyses/{the_id}.json", f"/analyses/{the_id}.json?classes=red,blue&sort=z",
                    "/analyze.json", "/search.json", "/search.json?q=red", "/search.json?q=a%20blue%20circle",
                    "/typographic.json", "/typographic.json?image=1&word=red&classes=red,blue",
                    "/typographic.json?image=1&word=red&classes=red,blue&placement=label&control=blank",
                    f"/typographic.json?analysis={the_id}&word=cat&classes=cat,dog"]  # fmt: skip
            for path in gets:
                answer = client.get(path)
                check(spec, path, answer.status_code, answer.json())
            fv = "/models/demo/layers/layer4.5/neurons/1/featurevis.json"
            answer = client.post(fv)
            check(spec, fv, answer.status_code, answer.json(), "post")
