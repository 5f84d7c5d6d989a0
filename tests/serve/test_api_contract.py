"""The HTTP API keeps its OpenAPI contract: schemathesis with every check and every phase, in-process (ASGI, no
network) on a tiny bundle with a small budget, finds no failure and no 5xx, with and without an API key; and the
same run does fail on a schema that leaves an answer out. The full run is benchmarks/api_contract.py."""

from __future__ import annotations

import json

import pytest

schemathesis = pytest.importorskip("schemathesis")
from benchmarks.api_contract import KEY, contract_config, describe, run_contract  # noqa: E402

from genrec.serve.app import Settings, create_app  # noqa: E402

OPERATIONS = 12  # every route but FastAPI's own docs


def app_for(bundle, tmp_path, **settings):
    return create_app(Settings(bundle=bundle, store=str(tmp_path / "history.sqlite"), deadline_ms=None, **settings))


def test_schema_has_one_error_model_content_types_and_auth(bundles, tmp_path):
    schema = app_for(bundles[0], tmp_path).openapi()
    text = json.dumps(schema)
    assert "HTTPValidationError" not in text and "ValidationError" not in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for op in operations.values():
            for code, answer in op["responses"].items():
                if code.startswith("4"):
                    assert answer["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorBody"}, (path, code)
    paths = schema["paths"]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert list(paths["/"]["get"]["responses"]["200"]["content"]) == ["text/html"]
    assert {"400", "401", "413", "422"} <= set(paths["/v1/recommend"]["post"]["responses"])
    assert "409" in paths["/admin/reload"]["post"]["responses"]
    assert "404" in paths["/v1/items/{item_id}/similar"]["get"]["responses"]
    assert paths["/v1/items/search"]["get"]["parameters"][0]["schema"]["maxLength"] == 200
    assert paths["/v1/recommend"]["post"]["security"] == [{}, {"bearer": []}]  # no key: the token is optional
    keyed = app_for(bundles[0], tmp_path, api_key=KEY).openapi()
    assert keyed["paths"]["/v1/recommend"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in keyed["paths"]["/healthz"]["get"]


@pytest.mark.parametrize("api_key", [None, KEY], ids=["open", "keyed"])
def test_every_answer_matches_the_schema(bundles, tmp_path, api_key):
    app = app_for(bundles[0], tmp_path, api_key=api_key)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=contract_config(8, seed=1, api_key=api_key))
    result = run_contract(schema)
    assert not result["failures"] and not result["errors"], describe(result)
    assert result["server_errors"] == 0 and result["operations"] == OPERATIONS
    assert result["cases"] >= 200 and {"200", "404", "422"} <= set(result["statuses"])


def test_the_check_fails_on_a_schema_that_leaves_an_answer_out(bundles, tmp_path):
    app = app_for(bundles[0], tmp_path)
    wrong = json.loads(json.dumps(app.openapi()))
    del wrong["paths"]["/v1/items/{item_id}/similar"]["get"]["responses"]["404"]  # unknown ids are answered 404
    schema = schemathesis.openapi.from_dict(wrong, config=contract_config(8, seed=1))
    schema.app = app
    result = run_contract(schema.include(path="/v1/items/{item_id}/similar"))
    assert {(f["code"], f["status"]) for f in result["failures"]} >= {("ST103", 404)}, describe(result)
