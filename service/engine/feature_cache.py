"""Aligned vision features of recent images, keyed by the content hash of their pixels, within a byte budget.

A repeated image skips the vision encoder even where its prefix does not match (another system prompt, another
place in the conversation). Least recently used first out. Used by the runner on the engine thread only.
"""

from __future__ import annotations

from collections import OrderedDict

import paddle


class FeatureCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[bytes, paddle.Tensor] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __contains__(self, content: object) -> bool:
        """Whether the image's features are here (a plain lookup: the scheduler asks it, no tensor is touched)."""
        return content in self._entries

    def get(self, content: bytes) -> paddle.Tensor | None:
        """[tokens, hidden] features of the image, or None."""
        features = self._entries.get(content)
        if features is None:
            self.misses += 1
            return None
        self._entries.move_to_end(content)
        self.hits += 1
        return features

    def put(self, content: bytes, features: paddle.Tensor) -> None:
        size = _nbytes(features)
        if size > self.budget_bytes or content in self._entries:
            return
        while self.nbytes + size > self.budget_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.nbytes -= _nbytes(dropped)
        self._entries[content] = features.clone()  # not a view that would keep the whole batch alive
        self.nbytes += size


def _nbytes(tensor: paddle.Tensor) -> int:
    count = 1
    for dim in tensor.shape:
        count *= dim
    return count * tensor.element_size()
