"""Reading published Janus checkpoints (torch `.bin` or safetensors, single or sharded) without torch."""

from model.checkpoint.errors import CheckpointError

__all__ = ["CheckpointError"]
