"""The playground: a page at /playground/ that calls the public API from the browser.

Static files shipped in the package (`service/api/static`), no build step, nothing fetched from elsewhere (the
Content-Security-Policy says so to the browser). Not part of the API: absent from the OpenAPI document, and the
`playground` setting leaves it out entirely (404). The page itself needs no API key; every call it makes does.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException

STATIC = resources.files("service.api") / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".js": "text/javascript; charset=utf-8"}
# Only what the page needs: its own files, the images it shows (data: URLs), and the API on the same origin.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: an upgraded server must not run an old page against a new API
}
INDEX = "index.html"

router = APIRouter(include_in_schema=False)


def _served_files() -> dict[str, str]:
    """File name -> media type, fixed at start: the route never turns a path from the URL into a file path."""
    return {entry.name: MEDIA_TYPES[suffix] for entry in STATIC.iterdir()
            if entry.is_file() and (suffix := "." + entry.name.rsplit(".", 1)[-1]) in MEDIA_TYPES}


FILES = _served_files()


def _file(name: str) -> Response:
    if name not in FILES:
        raise HTTPException(404, f"the playground has no file {name!r}")
    return Response((STATIC / name).read_bytes(), media_type=FILES[name], headers=HEADERS)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("playground/", status_code=307)


@router.get("/playground")
async def playground_without_slash() -> RedirectResponse:
    # The page's files and the API are addressed relative to /playground/, which needs the trailing slash.
    return RedirectResponse("playground/", status_code=307)


@router.get("/playground/")
async def playground() -> Response:
    return _file(INDEX)


@router.get("/playground/{name}")
async def playground_file(name: str) -> Response:
    return _file(name)
