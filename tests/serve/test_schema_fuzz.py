"""Schemathesis against the OpenAPI schema of a live server on loopback: no generated request gets a 5xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("uvicorn")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from tests.serve.conftest import live_server  # noqa: E402

from genrec.serve.app import Settings, create_app  # noqa: E402


@pytest.fixture(scope="module")
def live_schema(bundles, tmp_path_factory):
    """The app under uvicorn on a free 127.0.0.1 port (no key: loopback only), and its schema."""
    store = tmp_path_factory.mktemp("fuzz") / "history.sqlite"
    app = create_app(Settings(bundle=bundles[0], store=str(store), deadline_ms=None))
    with live_server(app) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_no_request_the_schema_allows_or_breaks_gets_a_5xx(live_schema):
    operations = [result.ok() for result in live_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/recommend", "/v1/events", "/v1/items/{item_id}/similar"}
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case):
            response = case.call(timeout=30)
            assert response.status_code < 500, (f"{case.method} {case.formatted_path} {case.body!r}: "
                                                f"{response.status_code} {response.text}")

        no_server_error()
