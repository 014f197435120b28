"""The playground page itself: served by the service, loads cleanly, says when the weights are random, readable on a
narrow window, absent from the OpenAPI document and gone when its setting is off."""

from __future__ import annotations

import httpx

from service.api.app import schema_app
from tests.service.helpers import start_server, test_settings


def test_the_page_loads_without_console_errors_and_shows_the_model(server, tab):
    page = tab(server).open()
    line = page.page.locator("#model-line")
    info = httpx.get(f"{server.url}/info").json()
    assert line.inner_text().startswith(f"{info['model']} · cpu · float32")
    assert page.page.title() == "janus-serve playground"
    page.screenshot("page-understand")
    page.page.get_by_role("tab", name="Generate images").click()
    page.screenshot("page-generate")


def test_random_weights_get_an_unmistakable_banner(server, tab):
    assert httpx.get(f"{server.url}/health").headers["x-random-weights"] == "true"
    page = tab(server).open()
    banner = page.page.get_by_role("alert").filter(has_text="RANDOM weights")
    assert banner.is_visible()
    assert "random weights" in page.page.locator("#model-line").inner_text()


def test_real_weights_get_no_banner(tiny_dir, tab, tmp_path):
    # The same tiny network with its config saying the weights are real: no banner, no "random weights".
    import json
    import shutil

    real = tmp_path / "real"
    shutil.copytree(tiny_dir, real)
    config = json.loads((real / "config.json").read_text())
    config["random_weights"] = False
    (real / "config.json").write_text(json.dumps(config))
    live = start_server(test_settings(real))
    try:
        assert httpx.get(f"{live.url}/health").headers["x-random-weights"] == "false"
        page = tab(live).open()
        assert page.page.locator("#random-banner").is_hidden()
        assert not page.page.locator("#model-line").inner_text().endswith("random weights")
    finally:
        live.stop()


def test_the_root_leads_to_the_page_and_its_files_carry_a_strict_content_policy(server):
    with httpx.Client(base_url=server.url) as http:
        root = http.get("/")
        assert root.status_code == 307 and root.headers["location"] == "playground/"
        assert http.get("/playground").headers["location"] == "playground/"
        page = http.get("/playground/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
        script = http.get("/playground/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        for missing in ("/playground/nothing.js", "/playground/..%2Fapp.py", "/playground/..%2F..%2Fsettings.py"):
            reply = http.get(missing)
            assert reply.status_code == 404, missing
            assert reply.json()["error"]["status"] == 404


def test_the_page_calls_nothing_outside_the_server(server, tab):
    page = tab(server)
    hosts = []
    page.page.on("request", lambda request: hosts.append(httpx.URL(request.url).netloc.decode()))
    page.open()
    page.page.wait_for_load_state("networkidle")
    assert hosts and set(hosts) == {server.url.removeprefix("http://")}


def test_the_setting_off_removes_the_page(make_server):
    live = make_server(playground="off")
    with httpx.Client(base_url=live.url) as http:
        for path in ("/", "/playground", "/playground/", "/playground/app.js"):
            reply = http.get(path)
            assert reply.status_code == 404, path
            assert reply.json()["error"]["type"] == "not_found"
        assert http.get("/info").status_code == 200  # the API is unaffected


def test_the_page_adds_nothing_to_the_openapi_document(server):
    served = httpx.get(f"{server.url}/openapi.json").json()
    exported = schema_app().openapi()
    for schema in (served, exported):
        assert not [path for path in schema["paths"] if path == "/" or path.startswith("/playground")]
    assert served["paths"].keys() == exported["paths"].keys()


def test_a_narrow_window_needs_no_sideways_scrolling(server, tab):
    page = tab(server, viewport={"width": 360, "height": 780}).open()
    for name in ("Ask about images", "Generate images"):
        page.page.get_by_role("tab", name=name).click()
        overflow = page.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name}: {overflow} px wider than the window"
    page.screenshot("page-narrow")


def test_every_page_file_is_served_and_shipped_in_the_package():
    import tomllib
    from pathlib import Path

    from service.api.routes import playground

    static = Path(playground.__file__).resolve().parents[1] / "static"
    assert set(playground.FILES) == {path.name for path in static.iterdir()}
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "static/*" in pyproject["tool"]["setuptools"]["package-data"]["service.api"]
