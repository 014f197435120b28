"""The optional API key: required everywhere but the probes, accepted as Bearer or X-API-Key."""

from __future__ import annotations

import pytest

from tests.service.helpers import b64, image_bytes

PROTECTED = [("POST", "/understand", {"question": "What?", "images": [b64(image_bytes())], "max_new_tokens": 2}),
             ("POST", "/generate", {"prompt": "a fox"}), ("GET", "/metrics", None), ("GET", "/info", None)]


@pytest.fixture(scope="module")
def locked(tiny_dir):
    from tests.service.helpers import start_server, test_settings

    live = start_server(test_settings(tiny_dir, api_key="s3cret-key"))
    yield live
    live.stop()


@pytest.mark.parametrize(("method", "path", "payload"), PROTECTED)
def test_every_route_but_the_probes_needs_the_key(locked, method, path, payload):
    with locked.client() as http:
        reply = http.request(method, path, json=payload)
    assert reply.status_code == 401, reply.text
    assert reply.json()["error"]["type"] == "unauthorized" and "missing" in reply.json()["error"]["message"]
    assert reply.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path", "payload"), PROTECTED)
@pytest.mark.parametrize("how", ["bearer", "header"])
def test_the_key_is_accepted_as_bearer_token_or_header(locked, method, path, payload, how):
    headers = {"Authorization": "Bearer s3cret-key"} if how == "bearer" else {"X-API-Key": "s3cret-key"}
    with locked.client(headers=headers) as http:
        assert http.request(method, path, json=payload).status_code == 200


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cret-ke"},
                                     {"Authorization": "Basic s3cret-key"},
                                     {"X-API-Key": "s3cret-key-ü".encode()}])
def test_a_wrong_key_is_refused(locked, headers):
    # The non-ASCII one must not break the constant-time comparison (a 500) but be refused like any other.
    with locked.client(headers=headers) as http:
        reply = http.post("/generate", json={"prompt": "a fox"})
    assert reply.status_code == 401 and reply.json()["error"]["type"] == "unauthorized"


def test_probes_need_no_key(locked):
    with locked.client() as http:
        assert http.get("/health").status_code == 200
        assert http.get("/ready").status_code == 200


def test_the_key_is_checked_before_the_body_is_looked_at(locked):
    with locked.client() as http:
        reply = http.post("/generate", content=b"{broken", headers={"content-type": "application/json"})
    assert reply.status_code == 401


def test_without_a_configured_key_no_key_is_needed(client):
    assert client.get("/info").status_code == 200
