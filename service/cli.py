"""`janus-serve`: load the model, then serve the API with uvicorn until SIGTERM / Ctrl-C.

Every setting is a flag (`--max-rows 16`) and an environment variable (`JANUS_MAX_ROWS=16`); flags win.
`janus-serve self-test` checks the configured device and dtype against the CPU instead (service/selftest.py);
`janus-serve plan` says whether a model and settings fit a card, from its config.json alone (service/plan_cli.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import types
import typing
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from pydantic import SecretStr, ValidationError

from model import runtime_env
from service.settings import Settings

if TYPE_CHECKING:
    from service.runtime import Runtime

log = logging.getLogger("service")


def _flag_type(annotation: Any) -> dict[str, Any]:
    """argparse keyword arguments for a settings field's type."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": list(typing.get_args(annotation))}
    if annotation in (int, float, Path):
        return {"type": annotation}
    if annotation in (str, SecretStr):
        return {"type": str}
    raise TypeError(f"no flag type for {annotation!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="janus-serve", description=__doc__.splitlines()[0],
        epilog="Without --model-dir the server runs the built-in demo model: a small model trained on synthetic "
               "shapes, not Janus-Pro. "
               "`janus-serve self-test [--device D] [--dtype T]` checks a device against the CPU and exits; "
               "`janus-serve plan --model-dir DIR --device-memory 16GiB` says what fits a card.")
    for name, field in Settings.model_fields.items():
        env = f"JANUS_{name.upper()}"
        default = "unset" if field.default is None else field.default
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar=env,
                            help=f"{field.description} [env {env}; default {default}]", **_flag_type(field.annotation))
    return parser


def load_settings(argv: list[str] | None = None) -> Settings:
    """Environment, then the flags given on top. Raises SystemExit(2) with the reason on a bad value."""
    parser = build_parser()
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in err.errors())
        parser.error(problems)
        raise  # unreachable: parser.error exits


class Server(uvicorn.Server):
    """uvicorn's graceful shutdown, plus: the engine starts draining the moment the signal arrives.

    Requests still running when the drain time is up then end with an error the client can read (a 503, or an
    `error` event in a stream) instead of a dropped connection when uvicorn stops waiting for them.
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            drain = self.runtime.settings.drain_timeout_s
            log.info("signal %d: draining for up to %.0f s", sig, drain)
            threading.Thread(target=self.runtime.engine.shutdown, args=(drain,), name="janus-drain",
                             daemon=True).start()
        super().handle_exit(sig, frame)


def prepare_files() -> bool:
    """Check the cache directory before anything writes there, and keep the process's own files inside it."""
    try:
        runtime_env.prepare_cache_dir()
    except runtime_env.CacheDirError as err:
        log.critical("%s", err)
        return False
    runtime_env.keep_writes_in_cache()
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["self-test"]:
        from service import selftest

        return selftest.main(argv[1:])
    if argv[:1] == ["plan"]:
        from service import plan_cli

        return plan_cli.main(argv[1:])
    settings = load_settings(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not prepare_files():
        return 1

    # Imported here: they load Paddle, which `--help` and bad flags should not wait for.
    from service.api.app import build_app
    from service.runtime import Runtime

    try:
        runtime = Runtime.load(settings)
    except Exception as err:  # noqa: BLE001 - a bad checkpoint or device: say why in one line and exit
        log.critical("cannot load the model: %s", err, exc_info=settings.log_level == "debug")
        return 1
    # uvicorn waits a little longer than the engine drains, so that cut-off requests can still send their error.
    config = uvicorn.Config(build_app(runtime), host=settings.host, port=settings.port, log_config=None,
                            log_level=settings.log_level, timeout_graceful_shutdown=settings.drain_timeout_s + 5)
    Server(config, runtime).run()
    log.info("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
