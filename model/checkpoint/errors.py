from __future__ import annotations


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded: the message names the file and, where it applies, the key and shapes."""
