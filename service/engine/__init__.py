"""The serving engine: scheduler (pure Python), runner (tensors), request state, and the loop that ties them."""

from service.engine.config import EngineConfig
from service.engine.engine import Engine
from service.engine.request import RequestHandle

__all__ = ["Engine", "EngineConfig", "RequestHandle"]
