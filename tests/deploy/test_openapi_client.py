"""openapi.yaml as client authors use it: a valid document, and a Python client generated from it that works
against a live server (the real engine over the tiny Paddle model behind uvicorn on 127.0.0.1).
"""

from __future__ import annotations

import base64
import importlib
import io
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate
from PIL import Image

# The API tests' own server start-up; imported as a module so that pytest does not collect `test_settings`.
from tests.service import helpers

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = ROOT / "openapi.yaml"
PACKAGE = "janus_serve_client"
# Names that read as what the call does: verb_noun, no path or HTTP-method residue of auto-generated ids.
METHOD_NAME = re.compile(r"[a-z]+(_[a-z]+)+")
AUTO_ID_RESIDUE = re.compile(r"_(get|post|put|delete|patch)$|__|^(post|put)_")


def load_document() -> dict[str, Any] | None:
    return yaml.safe_load(OPENAPI.read_text()) if OPENAPI.is_file() else None


DOCUMENT = load_document()
pytestmark = pytest.mark.skipif(DOCUMENT is None, reason="openapi.yaml is not in the repository yet")


def operations(document: dict[str, Any]) -> dict[str, str]:
    """operationId -> "METHOD /path"."""
    return {op["operationId"]: f"{method.upper()} {path}"
            for path, item in document["paths"].items() for method, op in item.items()
            if isinstance(op, dict) and "operationId" in op}


def multi_content_bodies(document: dict[str, Any] | None) -> list[str]:
    """Operations whose request body is documented in more than one media type."""
    if document is None:
        return []
    return [op["operationId"] for item in document["paths"].values() for op in item.values()
            if isinstance(op, dict) and len(op.get("requestBody", {}).get("content", {})) > 1]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    assert DOCUMENT is not None
    return DOCUMENT


def test_openapi_document_passes_the_spec_validator(document):
    validate(document)


def test_every_operation_has_an_id_that_reads_as_a_method_name(document):
    ops = operations(document)
    assert len(ops) == sum(len([m for m in item if m in ("get", "post", "put", "delete", "patch")])
                           for item in document["paths"].values())
    for operation_id in ops:
        assert METHOD_NAME.fullmatch(operation_id), operation_id
        assert not AUTO_ID_RESIDUE.search(operation_id), operation_id


def generate(out: Path) -> Path:
    """Generate the client package from openapi.yaml into `out`/site/<package>; returns the package folder."""
    config = out / "config.yaml"
    # No post hooks: formatting the generated code is not what is under test, and needs no extra tool.
    config.write_text(f"post_hooks: []\npackage_name_override: {PACKAGE}\n")
    generator = Path(sysconfig.get_path("scripts")) / "openapi-python-client"
    result = subprocess.run(
        [str(generator), "generate", "--path", str(OPENAPI), "--output-path", str(out / "project"),
         "--config", str(config), "--meta", "none"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    # With --meta none the output folder is the package itself; its parent is what goes on sys.path.
    (out / "site").mkdir()
    return (out / "project").rename(out / "site" / PACKAGE)


def unimportable_modules(site: Path) -> list[str]:
    """Generated modules that fail to import, each tried in a fresh interpreter with only `site` added."""
    names = sorted(".".join(p.relative_to(site).with_suffix("").parts).removesuffix(".__init__")
                   for p in (site / PACKAGE).rglob("*.py"))
    probe = ("import importlib, sys\nfailed = []\nfor name in sys.argv[1:]:\n    try:\n"
             "        importlib.import_module(name)\n    except Exception as err:\n"
             "        failed.append(f'{name}: {err!r}')\nprint('\\n'.join(failed))")
    result = subprocess.run([sys.executable, "-c", probe, *names], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("client"))


def test_no_request_body_is_documented_in_two_media_types():
    # openapi-python-client 0.29.1 writes `| Unset` without importing it for such a body (upstream issue 1451):
    # the generated client would not import.
    assert multi_content_bodies(DOCUMENT) == []


def test_generated_client_imports_as_generated(pristine):
    assert unimportable_modules(pristine.parent) == []


def test_generated_client_has_one_module_per_operation_named_by_its_id(pristine, document):
    modules = {p.stem for p in (pristine / "api").glob("*/*.py") if p.stem != "__init__"}
    assert modules == set(operations(document))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A generated client, untouched, on sys.path."""
    package = generate(tmp_path_factory.mktemp("client-used"))
    sys.path.insert(0, str(package.parent))
    try:
        yield package
    finally:
        sys.path.remove(str(package.parent))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


@pytest.fixture(scope="module")
def server(tiny_dir: Path) -> Iterator[helpers.LiveServer]:
    live = helpers.start_server(helpers.test_settings(tiny_dir))
    yield live
    live.stop()


@pytest.fixture
def client(generated, server):
    client_module = module("client")
    with client_module.AuthenticatedClient(base_url=server.url, token="unused", timeout=120.0) as api:
        yield api


def test_generated_client_understands_an_image_sent_as_json(client):
    models = module("models")
    body = models.UnderstandRequest(question="What is in this picture?",
                                    images=[base64.b64encode(helpers.image_bytes(seed=1)).decode()], max_new_tokens=6)
    answer = module("api.inference.understand_image").sync(client=client, body=body)
    assert isinstance(answer, models.UnderstandResponse), answer
    assert isinstance(answer.text, str)
    assert 1 <= answer.usage.completion_tokens <= 6
    assert answer.random_weights is True


def test_generated_client_understands_an_image_sent_as_a_multipart_form(client):
    models, types = module("models"), module("types")
    upload = types.File(payload=io.BytesIO(helpers.image_bytes(seed=2)), file_name="photo.png", mime_type="image/png")
    body = models.UnderstandForm(image=[upload], question="Describe it.", max_new_tokens=4, seed=5)
    answer = module("api.inference.understand_image_upload").sync(client=client, body=body)
    assert isinstance(answer, models.UnderstandResponse), answer
    assert answer.seed == 5 and 1 <= answer.usage.completion_tokens <= 4


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_generated_client_generates_images_that_decode(client, fmt: str):
    models = module("models")
    body = models.GenerateRequest(prompt="a red fox in the snow", parallel_size=2, seed=11,
                                  format_=models.GenerateRequestFormat[fmt])
    result = module("api.inference.generate_images").sync(client=client, body=body)
    assert isinstance(result, models.GenerateResponse), result
    assert [image.index for image in result.images] == [0, 1]
    assert result.seed == 11
    for image in result.images:
        decoded = Image.open(io.BytesIO(base64.b64decode(image.data)))
        decoded.load()
        assert decoded.format == fmt
        assert decoded.size == (result.width, result.height)


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    return [(event.event, event.data) for event in helpers.sse_events(iter(text.splitlines()))]


def test_generated_client_streams_through_the_stream_operations_as_text_with_the_named_event_payloads(client):
    # The stream operations answer a string (the event stream) to a generated client; each event's data reads as
    # the schema the document names for it, and the plain operation keeps its typed answer.
    models = module("models")
    picture = base64.b64encode(helpers.image_bytes(seed=3)).decode()
    body = models.UnderstandRequest(question="What is it?", images=[picture], max_new_tokens=5, seed=2)
    streamed = module("api.inference.understand_image_stream").sync(client=client, body=body)
    assert isinstance(streamed, str), streamed
    *deltas, (last, done) = _events(streamed)
    assert {name for name, _ in deltas} <= {"delta"} and last == "done"
    answer = models.UnderstandResponse.from_dict(done)
    assert "".join(models.TextDelta.from_dict(data).text for _, data in deltas) == answer.text
    plain = module("api.inference.understand_image").sync(client=client, body=body)
    assert isinstance(plain, models.UnderstandResponse) and plain.text == answer.text

    request = models.GenerateRequest(prompt="a red fox", seed=4, format_=models.GenerateRequestFormat.PNG, previews=1)
    streamed = module("api.inference.generate_images_stream").sync(client=client, body=request)
    assert isinstance(streamed, str), streamed
    *drawing, (decoding, decoded), (last, done) = _events(streamed)
    assert drawing and {name for name, _ in drawing} <= {"progress", "preview"} and last == "done"
    assert decoding == "decoding" and models.Decoding.from_dict(decoded).images == 1
    steps = [models.Progress.from_dict(data) for name, data in drawing if name == "progress"]
    assert steps[-1].steps_done == steps[-1].steps_total
    for preview in (models.Preview.from_dict(data) for name, data in drawing if name == "preview"):
        assert preview.steps_done < preview.steps_total and len(preview.images) == 1
    images = models.GenerateResponse.from_dict(done)
    plain_images = module("api.inference.generate_images").sync(client=client, body=request)
    assert [image.data for image in images.images] == [image.data for image in plain_images.images]


def test_generated_client_parses_errors_into_the_error_model(client):
    models = module("models")
    body = models.GenerateRequest(prompt="x", parallel_size=0)
    error = module("api.inference.generate_images").sync(client=client, body=body)
    assert isinstance(error, models.ErrorResponse), error
    assert error.error.status == 422


def test_generated_client_reads_the_probes(generated, server):
    client_module, models = module("client"), module("models")
    with client_module.Client(base_url=server.url, timeout=30.0) as api:
        assert isinstance(module("api.operations.get_health").sync(client=api), models.HealthResponse)
        assert isinstance(module("api.operations.get_readiness").sync(client=api), models.ReadyResponse)


@pytest.fixture(scope="module")
def keyed_server(tiny_dir: Path) -> Iterator[helpers.LiveServer]:
    live = helpers.start_server(helpers.test_settings(tiny_dir, api_key="s3cret"))
    yield live
    live.stop()


def test_generated_authenticated_client_sends_the_api_key_as_a_bearer_token(generated, keyed_server):
    client_module, models = module("client"), module("models")
    get_model_info = module("api.operations.get_model_info")
    with client_module.Client(base_url=keyed_server.url, timeout=30.0) as anonymous:
        refused = get_model_info.sync(client=anonymous)
    assert isinstance(refused, models.ErrorResponse) and refused.error.status == 401
    with client_module.AuthenticatedClient(base_url=keyed_server.url, token="s3cret", timeout=30.0) as api:
        info = get_model_info.sync(client=api)
    assert isinstance(info, models.InfoResponse), info
    assert info.random_weights is True and info.limits.max_rows >= 1
