"""janus-serve: the serving side (settings, engine, HTTP API, CLI) around the `model` package."""

import model  # noqa: F401  (sets Paddle's process environment before anything imports paddle)
