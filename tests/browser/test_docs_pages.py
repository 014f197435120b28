"""The API documentation page (/docs: Swagger UI) works without internet: everything it loads comes from the service
itself (every request that would leave 127.0.0.1 is blocked and recorded). There is no /redoc."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
from playwright.sync_api import expect

# What the pages must show: operations of the service, rendered from its own OpenAPI document.
OPERATIONS = ("Generate images from a prompt", "Answer a question about images")


def offline(watched) -> list[str]:
    """Block every request to a host other than 127.0.0.1; returns the list the blocked URLs go to."""
    blocked: list[str] = []

    def route(request_route) -> None:
        url = request_route.request.url
        if urlsplit(url).scheme in ("data", "blob") or urlsplit(url).hostname == "127.0.0.1":
            request_route.continue_()
        else:
            blocked.append(url)
            request_route.abort()

    watched.page.route("**/*", route)
    return blocked


def test_swagger_ui_renders_the_operations_without_internet(server, tab):
    watched = tab(server)
    blocked = offline(watched)
    page = watched.page
    page.goto(f"{server.url}/docs")
    for summary in OPERATIONS:
        expect(page.locator(".opblock-summary-description", has_text=summary).first).to_be_visible()
    # an operation opens, with its request body schema
    page.locator(".opblock-summary", has_text="/generate/stream").first.click()
    expect(page.locator(".opblock-body").first).to_be_visible()
    assert page.locator(".opblock").count() >= 10
    watched.screenshot("docs-swagger-ui", full_page=False)
    assert blocked == []


def test_the_documentation_page_names_only_assets_of_the_service(server):
    html = httpx.get(f"{server.url}/docs").text
    assert "http://" not in html and "https://" not in html, html


def test_there_is_no_redoc_page(server):
    # ReDoc's bundle loads its maker's logo from a CDN whatever the options: /docs is the one documentation page
    assert httpx.get(f"{server.url}/redoc").status_code == 404
