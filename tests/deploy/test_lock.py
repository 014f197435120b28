"""The lock files: complete, hashed, in step with the declared requirements, and used by every install path.

Checked offline from the files themselves (tomllib + packaging), so a dependency added to pyproject.toml without
running ./.ci/lock fails here with the command to run, before any install.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
ORACLE_IN = ROOT / "tests" / "oracle" / "requirements.in"
ORACLE_LOCK = ROOT / "tests" / "oracle" / "requirements.txt"
FIX = "run ./.ci/lock and commit the lock files"


def declared() -> dict[tuple[str, str | None], Requirement]:
    """(name, extra) -> requirement, for the runtime dependencies and every extra of pyproject.toml."""
    out = {}
    for line in PYPROJECT["project"]["dependencies"]:
        req = Requirement(line)
        out[canonicalize_name(req.name), None] = req
    for extra, lines in PYPROJECT["project"]["optional-dependencies"].items():
        for line in lines:
            req = Requirement(line)
            out[canonicalize_name(req.name), extra] = req
    return out


def locked_packages() -> dict[str, dict]:
    return {canonicalize_name(p["name"]): p for p in LOCK["package"]}


def lock_problems(requirements: dict[tuple[str, str | None], Requirement], lock: dict) -> list[str]:
    """What makes `lock` (a parsed uv.lock) stale for `requirements`: missing, extra or unsatisfied entries."""
    packages = {canonicalize_name(p["name"]): p for p in lock["package"]}
    project = packages.get(canonicalize_name(PYPROJECT["project"]["name"]))
    if project is None:
        return ["the project itself is not in the lock"]
    recorded = {}
    for entry in project["metadata"]["requires-dist"]:
        marker = entry.get("marker", "")
        extra = re.fullmatch(r"extra == '([^']+)'", marker)
        recorded[canonicalize_name(entry["name"]), extra[1] if extra else None] = entry.get("specifier", "")
    problems = []
    for key, req in requirements.items():
        if key not in recorded:
            problems.append(f"{key[0]} ({key[1] or 'runtime'}) is declared but not locked")
        elif Requirement(f"x{recorded[key]}").specifier != req.specifier:
            problems.append(f"{key[0]}: declared {req.specifier}, locked for {recorded[key] or 'any version'}")
        elif key[0] in packages and not req.specifier.contains(Version(packages[key[0]]["version"]), prereleases=True):
            problems.append(f"{key[0]}: locked {packages[key[0]]['version']} does not satisfy {req.specifier}")
    problems += [f"{name} ({extra or 'runtime'}) is locked but no longer declared"
                 for name, extra in recorded if (name, extra) not in requirements]
    return problems


def unhashed(lock: dict) -> list[str]:
    """Locked registry packages that come without a sha256 for every file."""
    bad = []
    for package in lock["package"]:
        if "registry" not in package["source"]:
            continue
        files = package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else [])
        if not files or not all(str(f.get("hash", "")).startswith("sha256:") for f in files):
            bad.append(package["name"])
    return bad


def pinned_requirements(text: str) -> dict[str, tuple[str, list[str]]]:
    """A compiled requirements file: name -> (exact version, hashes)."""
    out = {}
    for block in re.split(r"\n(?=\S)", text):
        match = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", block)
        if match:
            out[canonicalize_name(match[1])] = (match[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


# the real files


def test_lock_matches_every_declared_requirement():
    assert lock_problems(declared(), LOCK) == [], FIX


def test_lock_covers_the_runtime_the_cpu_extra_and_the_test_extra():
    project = locked_packages()[canonicalize_name(PYPROJECT["project"]["name"])]
    assert set(project["optional-dependencies"]) == set(PYPROJECT["project"]["optional-dependencies"]) == {"cpu",
                                                                                                          "test"}
    packages = locked_packages()
    assert packages["paddlepaddle"]["version"] == "3.3.1"
    assert packages["paddlenlp"]["version"] == "3.0.0b4"
    # what the first rehearsal of the CPU image picked up unpinned is now fixed by the lock
    for name in ("fastapi", "uvicorn", "pydantic", "numpy", "pillow", "httpx"):
        assert Version(packages[name]["version"])


def test_every_locked_file_has_a_sha256():
    assert unhashed(LOCK) == []


def test_lock_is_for_linux_on_the_projects_python():
    assert LOCK["requires-python"] == "==3.11.*"
    assert LOCK["supported-markers"] == ["sys_platform == 'linux'"]


def test_the_build_backend_of_the_project_itself_is_pinned():
    constraints = PYPROJECT["tool"]["uv"]["build-constraint-dependencies"]
    assert [Requirement(c).name for c in constraints] == ["setuptools"]
    assert all(str(Requirement(c).specifier).startswith("==") for c in constraints)
    assert LOCK["manifest"]["build-constraints"] == [
        {"name": Requirement(c).name, "specifier": str(Requirement(c).specifier)} for c in constraints], FIX


def test_oracle_lock_pins_every_package_with_hashes_and_keeps_the_declared_pins():
    text = ORACLE_LOCK.read_text()
    assert text.splitlines()[1].strip() == "#    ./.ci/lock"  # the command that regenerates it heads the file
    pins = pinned_requirements(text)
    assert {"torch", "transformers", "safetensors", "numpy", "tokenizers", "huggingface-hub"} <= set(pins)
    assert all(hashes for _, hashes in pins.values()), [name for name, (_, h) in pins.items() if not h]
    for line in ORACLE_IN.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert pins[canonicalize_name(req.name)][0] == str(req.specifier).removeprefix("=="), (line, FIX)
    # the CPU build of torch: the CUDA one would bring several GB of nvidia-* packages
    assert pins["torch"][0].endswith("+cpu")
    assert not [name for name in pins if name.startswith("nvidia-")]


def test_installer_pin_is_hashed_and_matches_its_declaration():
    pins = pinned_requirements((ROOT / ".ci" / "uv.txt").read_text())
    declared_uv = Requirement(next(line for line in (ROOT / ".ci" / "uv.in").read_text().splitlines()
                                   if line.startswith("uv")))
    assert set(pins) == {"uv"}
    assert pins["uv"][0] == str(declared_uv.specifier).removeprefix("==")
    assert len(pins["uv"][1]) >= 2  # one per platform wheel (x86_64 and aarch64 at least) and the sdist


def test_every_install_path_goes_through_the_locks():
    install = (ROOT / ".ci" / "install").read_text()
    assert "sync --locked" in install  # refuses a lock that does not match pyproject.toml
    assert "pip install" not in install.replace("uv\" pip install", "")  # the GPU wheel is the only one outside
    assert "paddlepaddle-gpu==3.3.1" in install and "--no-install-package paddlepaddle" in install
    oracle = (ROOT / "tests" / "oracle" / "setup_venv.sh").read_text()
    assert "pip sync" in oracle and "--require-hashes" in oracle and "requirements.txt" in oracle
    assert '"$root/.ci/install"' in (ROOT / ".ci" / "serve").read_text()
    assert '"$root/.ci/install"' in (ROOT / ".ci" / "test").read_text()
    assert "setup_venv.sh" in (ROOT / ".ci" / "test").read_text()
    for kind in ("cpu", "gpu"):
        dockerfile = (ROOT / "docker" / f"Dockerfile.{kind}").read_text()
        assert "uv.lock" in dockerfile and ".ci/uv.txt" in dockerfile and ".ci/install" in dockerfile


def test_readme_names_the_update_command():
    readme = (ROOT / "README.md").read_text()
    assert "./.ci/lock" in readme and "./.ci/lock --upgrade" in readme


# the checks can fail


def test_a_dependency_added_without_relocking_is_reported():
    requirements = declared()
    requirements["litellm", "test"] = Requirement("litellm>=1")
    assert lock_problems(requirements, LOCK) == ["litellm (test) is declared but not locked"]


def test_a_changed_or_removed_requirement_is_reported():
    requirements = declared()
    requirements["fastapi", None] = Requirement("fastapi>=0.115,<0.116")
    del requirements["ruff", "test"]
    problems = lock_problems(requirements, LOCK)
    assert any(p.startswith("fastapi: declared") for p in problems)
    assert "ruff (test) is locked but no longer declared" in problems


def test_a_lock_whose_versions_no_longer_satisfy_is_reported():
    requirements = declared()
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    for package in lock["package"]:
        if package["name"] == "paddlenlp":
            package["version"] = "2.8.1"
    assert lock_problems(requirements, lock) == ["paddlenlp: locked 2.8.1 does not satisfy ==3.0.0b4"]


def test_a_file_without_hash_is_reported():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    victim = next(p for p in lock["package"] if p.get("wheels"))
    victim["wheels"][0].pop("hash")
    assert unhashed(lock) == [victim["name"]]


@pytest.mark.parametrize("text, expected", [
    ("# header\nfoo==1.0 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via bar\n", {"foo": ("1.0", ["a" * 64])}),
    ("foo==1.0\n", {"foo": ("1.0", [])}),
])
def test_compiled_requirements_are_read_as_written(text, expected):
    assert pinned_requirements(text) == expected
