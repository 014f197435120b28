"""The Janus-Pro network in PaddlePaddle: configuration, layers, checkpoint loading and inference primitives.

It knows nothing of requests, queues or HTTP.
"""

from model.runtime_env import apply_runtime_env

apply_runtime_env()
