"""The Dockerfiles, checked without a Docker engine: parsed with dockerfile-parse.

Each rule is a function returning the problems it finds, tested on the real files (no problems) and on a bad
Dockerfile (the problem is found), so that a rule which can no longer fail shows up as a failing test.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"gpu": ROOT / "docker" / "Dockerfile.gpu", "cpu": ROOT / "docker" / "Dockerfile.cpu"}
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
WEIGHT_FILE = re.compile(r"\.(safetensors|bin|pt|pth|ckpt|gguf)$|(^|/)(weights|checkpoints?|janus-pro[^/]*)/?$",
                         re.IGNORECASE)
BAD = """\
FROM python AS build
FROM nvidia/cuda:latest
ENV JANUS_API_KEY=hunter2 HF_TOKEN=abc
ARG PASSWORD=x
COPY weights/model.safetensors /models/
RUN pip install .
EXPOSE 8080
HEALTHCHECK NONE
ENTRYPOINT python -m http.server
"""


def parse(text: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(text.encode()))


def instructions(text: str, name: str) -> list[str]:
    return [i["value"] for i in parse(text).structure if i["instruction"] == name]


# rules


def unpinned_bases(text: str) -> list[str]:
    """Base images without a tag or digest, or tagged `latest`."""
    problems = []
    stages: set[str] = set()
    for value in instructions(text, "FROM"):
        words = [w for w in value.split() if not w.startswith("--")]
        image = words[0]
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
        if image.lower() in stages or image == "scratch":
            continue
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        if not name or "/" in tag or tag in ("", "latest"):
            problems.append(image)
    return problems


def final_user(text: str) -> str | None:
    users = instructions(text, "USER")
    return users[-1].strip() if users else None


def runs_as_root(text: str) -> bool:
    user = final_user(text)
    return user is None or user.split(":")[0] in ("root", "0")


def user_set_after_last_run(text: str) -> bool:
    order = [i["instruction"] for i in parse(text).structure]
    return "USER" in order and max(n for n, i in enumerate(order) if i == "USER") > max(
        (n for n, i in enumerate(order) if i == "RUN"), default=-1)


def healthcheck_command(text: str) -> str | None:
    checks = instructions(text, "HEALTHCHECK")
    if not checks or checks[-1].strip().upper() == "NONE":
        return None
    return checks[-1]


def entrypoint(text: str) -> list[str]:
    values = instructions(text, "ENTRYPOINT")
    if not values:
        return []
    value = values[-1].strip()
    return json.loads(value) if value.startswith("[") else shlex.split(value)


def exposed_ports(text: str) -> set[str]:
    return {port.split("/")[0] for value in instructions(text, "EXPOSE") for port in value.split()}


def secret_like_settings(text: str) -> list[str]:
    """ENV and ARG names that look like credentials and come with a value."""
    parser = parse(text)
    found = [name for name, value in parser.envs.items() if SECRET_NAME.search(name) and value]
    found += [name for name, value in parser.args.items() if SECRET_NAME.search(name) and value]
    return found


def install_commands(text: str) -> list[str]:
    return [value for value in instructions(text, "RUN") if ".ci/install" in value]


def copied_sources(text: str) -> list[str]:
    sources = []
    for name in ("COPY", "ADD"):
        for value in instructions(text, name):
            words = json.loads(value) if value.strip().startswith("[") else value.split()
            words = [w for w in words if not w.startswith("--")]
            sources += words[:-1]
    return sources


def _glob(pattern: str) -> re.Pattern[str]:
    # .dockerignore globs: `*` and `?` stay within one path segment, a leading `**/` matches any depth.
    anywhere = pattern.startswith("**/")
    body = re.escape(pattern.removeprefix("**/")).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return re.compile(("(.*/)?" if anywhere else "") + body + "(/.*)?")


def dockerignore_excludes(path: str) -> bool:
    """Whether the builder leaves `path` (relative to the repository top, the build context) out of the context."""
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        if _glob(pattern.lstrip("!").strip("/")).fullmatch(path):
            excluded = not negate
    return excluded


# the real files


@pytest.fixture(params=sorted(DOCKERFILES), ids=lambda kind: f"Dockerfile.{kind}")
def dockerfile(request: pytest.FixtureRequest) -> str:
    return DOCKERFILES[request.param].read_text()


def test_base_image_is_pinned_by_a_tag(dockerfile: str):
    assert instructions(dockerfile, "FROM")
    assert unpinned_bases(dockerfile) == []


def test_image_runs_as_a_non_root_user_set_after_the_install(dockerfile: str):
    assert not runs_as_root(dockerfile), final_user(dockerfile)
    assert user_set_after_last_run(dockerfile)


def test_healthcheck_requests_the_liveness_route(dockerfile: str):
    command = healthcheck_command(dockerfile)
    assert command is not None
    assert "/health" in command and "/ready" not in command
    # Python's urlopen raises on a 503, so the probe exits non-zero exactly when the service says it is unhealthy.
    assert "urlopen" in command


def test_entrypoint_is_the_janus_serve_console_script(dockerfile: str):
    command = entrypoint(dockerfile)
    assert command and Path(command[0]).name == "janus-serve", command
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["janus-serve"] == "service.cli:main"


def test_image_exposes_and_listens_on_port_8000_on_all_interfaces(dockerfile: str):
    assert exposed_ports(dockerfile) == {"8000"}
    envs = parse(dockerfile).envs
    assert envs["JANUS_PORT"] == "8000"
    assert envs["JANUS_HOST"] == "0.0.0.0"


def test_image_stops_with_sigterm_so_the_service_drains(dockerfile: str):
    assert [v.strip() for v in instructions(dockerfile, "STOPSIGNAL")] == ["SIGTERM"]


def test_no_credential_is_set_in_env_or_build_args(dockerfile: str):
    assert secret_like_settings(dockerfile) == []


def test_install_step_is_the_ci_install_script_without_test_extras(dockerfile: str):
    commands = install_commands(dockerfile)
    assert len(commands) == 1, commands
    assert "--no-test-extras" in commands[0]
    assert "/opt/venv" in commands[0]
    assert Path(entrypoint(dockerfile)[0]).parent == Path("/opt/venv/bin")
    assert ".ci/install" in copied_sources(dockerfile)


def test_ci_runs_the_same_install_script_as_the_images():
    # The images are only as tested as their install path: CI's test command must go through the same script.
    assert '"$root/.ci/install"' in (ROOT / ".ci" / "test").read_text()
    assert (ROOT / ".ci" / "install").stat().st_mode & 0o111


def test_gpu_image_installs_the_cuda_build_of_paddle():
    assert "--gpu" in install_commands(DOCKERFILES["gpu"].read_text())[0]
    assert "--gpu" not in install_commands(DOCKERFILES["cpu"].read_text())[0]


def test_gpu_base_image_cuda_version_matches_the_paddle_wheel_index():
    text = DOCKERFILES["gpu"].read_text()
    base = instructions(text, "FROM")[-1].split()[0]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-\w+-ubuntu[\d.]+", base)
    assert match, base
    cuda = f"cu{match[1]}{match[2]}"
    index_in_image = parse(text).args["PADDLE_GPU_INDEX"]
    index_in_script = re.search(r"PADDLE_GPU_INDEX:-([^}]+)}", (ROOT / ".ci" / "install").read_text())[1]
    assert index_in_image.rstrip("/").endswith(cuda)
    assert index_in_script.rstrip("/").endswith(cuda)


def test_images_use_the_python_version_the_project_requires():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ">=3.11" in requires and "<3.12" in requires
    assert re.match(r"python:3\.11\.\d+-slim", instructions(DOCKERFILES["cpu"].read_text(), "FROM")[-1])
    assert "python3.11-venv" in " ".join(instructions(DOCKERFILES["gpu"].read_text(), "RUN"))


DEMO_WEIGHTS = "model/demo_checkpoint/model.safetensors"


def test_no_weights_are_copied_into_the_image_and_copied_sources_exist(dockerfile: str):
    for source in copied_sources(dockerfile):
        assert not WEIGHT_FILE.search(source), source
        assert (ROOT / source).exists(), f"{source} is not in the build context"
        assert not dockerignore_excludes(source), f"{source} is excluded by .dockerignore"
        sent = [path.relative_to(ROOT).as_posix() for path in (ROOT / source).rglob("*") if path.is_file()]
        sent = [path for path in sent if not dockerignore_excludes(path)]
        # the one exception: the built-in demo model's few MB (model/demo.py), trained on synthetic shapes
        assert [path for path in sent if WEIGHT_FILE.search(path)] in ([], [DEMO_WEIGHTS])


def test_dockerignore_keeps_weights_and_virtual_environments_out_of_the_context():
    for path in (".venv/bin/python", ".venv-oracle/lib", ".cache/test-cache/x", ".git/HEAD",
                 "model/pytorch_model.bin", "somewhere/model.safetensors", "tests/conftest.py"):
        assert dockerignore_excludes(path), path
    for path in ("model/janus.py", "service/cli.py", "pyproject.toml", "README.md", ".ci/install",
                 "service/tests/x.py", DEMO_WEIGHTS):
        assert not dockerignore_excludes(path), path
    assert dockerignore_excludes("model/demo_checkpoint/pytorch_model.bin")


# the rules can fail


def test_rules_report_every_problem_of_a_bad_dockerfile():
    assert unpinned_bases(BAD) == ["python", "nvidia/cuda:latest"]
    assert runs_as_root(BAD)
    assert not user_set_after_last_run(BAD)
    assert healthcheck_command(BAD) is None
    assert entrypoint(BAD) == ["python", "-m", "http.server"]
    assert exposed_ports(BAD) == {"8080"}
    assert sorted(secret_like_settings(BAD)) == ["HF_TOKEN", "JANUS_API_KEY", "PASSWORD"]
    assert install_commands(BAD) == []
    assert any(WEIGHT_FILE.search(source) for source in copied_sources(BAD))


def test_root_user_after_a_non_root_one_counts_as_root():
    assert runs_as_root("FROM python:3.11.13-slim\nUSER 10001\nUSER 0:0\n")
    assert not runs_as_root("FROM python:3.11.13-slim\nUSER janus\n")


def test_credentials_without_a_value_are_allowed():
    assert secret_like_settings("FROM python:3.11.13-slim\nARG JANUS_API_KEY\nENV JANUS_PORT=8000\n") == []
