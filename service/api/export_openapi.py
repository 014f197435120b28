"""Write the OpenAPI document to `openapi.yaml` at the repository top: `python -m service.api.export_openapi`.

`--check` exits 1 instead of writing when the committed file differs from what the app generates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from service.api.app import schema_app

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"


class _Dumper(yaml.SafeDumper):
    """Multi-line descriptions as `|` blocks, readable in review diffs."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    return yaml.dump(schema_app().openapi(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH, help="where to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.is_file() or args.out.read_text(encoding="utf-8") != text:
            print(f"{args.out} is out of date: run python -m service.api.export_openapi", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
