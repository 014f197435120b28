"""A prompt as the KV cache sees it: its token ids cut into blocks, each full block named by a hash of its content
and everything before it, and the spans its images occupy.

A block's hash covers its token ids, the hash of the block before it (so equal blocks after different prefixes
never match), and, for positions that hold image features, the image's content hash and the offset into the image
(placeholder ids are the same for every image; the pixels are not). Pure Python and numpy; built on the asyncio
side at submission, never on the engine thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container
from dataclasses import dataclass, field

import numpy as np

BlockHash = bytes


def image_hash(pixels: np.ndarray) -> bytes:
    """Content hash of one preprocessed image [3, S, S]: equal pixels, equal features."""
    pixels = np.ascontiguousarray(pixels)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str((pixels.dtype.str, pixels.shape)).encode())
    digest.update(pixels.tobytes())
    return digest.digest()


@dataclass(frozen=True, slots=True)
class ImageSpan:
    start: int  # first position of the image's features
    end: int  # one past the last
    content: bytes  # image_hash of its pixels


@dataclass(slots=True)
class PromptBlocks:
    ids: list[int]
    block_size: int
    images: tuple[ImageSpan, ...] = ()
    hashes: list[BlockHash] = field(default_factory=list)  # one per full block

    def __post_init__(self) -> None:
        self.hashes = chain_hashes(b"", self.ids, 0, self.block_size, self.images)

    def __len__(self) -> int:
        return len(self.ids)

    def usable_prefix(self, blocks: int, features_at_hand: Container[bytes] = ()) -> int:
        """How many of `blocks` leading cached blocks a request may reuse: at most all but its last position
        (which must run to give the first token's logits), and never ending inside an image whose features are
        not at hand (`features_at_hand`: content hashes of images whose vision features are cached), since the
        prefill needs the features of the image's remaining positions. (An image is followed by the question in
        the same block, so a second question about it would otherwise recompute the whole image.)"""
        blocks = min(blocks, (len(self.ids) - 1) // self.block_size)
        end = blocks * self.block_size
        for image in self.images:
            if image.start < end < image.end and image.content not in features_at_hand:
                return image.start // self.block_size
        return blocks

    def images_from(self, position: int) -> list[tuple[int, int]]:
        """(index, first feature) of the images with positions at or after `position`: the features a prefill
        from there takes (an image the position cuts takes its features from that offset on)."""
        return [(i, max(0, position - image.start)) for i, image in enumerate(self.images) if image.end > position]


def chain_hashes(previous: BlockHash, ids: list[int], offset: int, block_size: int,
                 images: tuple[ImageSpan, ...] = ()) -> list[BlockHash]:
    """Hashes of the full blocks of `ids`, which start at position `offset` (a multiple of block_size) after a
    block named `previous` (b"" at the start)."""
    assert offset % block_size == 0
    array = np.asarray(ids, np.int64)
    hashes = []
    for first in range(0, len(array) - block_size + 1, block_size):
        start = offset + first
        digest = hashlib.blake2b(previous, digest_size=16)
        digest.update(array[first:first + block_size].tobytes())
        for image in images:
            if image.start < start + block_size and start < image.end:
                digest.update(image.content + (start - image.start).to_bytes(8, "little", signed=True))
        previous = digest.digest()
        hashes.append(previous)
    return hashes


def image_spans(ids: list[int], image_id: int, contents: tuple[bytes, ...]) -> tuple[ImageSpan, ...]:
    """The spans of the placeholder runs of `ids`, one image each, in reading order."""
    if not contents:
        return ()
    positions = np.flatnonzero(np.asarray(ids) == image_id)
    per_image = len(positions) // len(contents)
    if per_image * len(contents) != len(positions):
        raise ValueError(f"{len(positions)} image placeholders do not split into {len(contents)} images")
    return tuple(ImageSpan(int(positions[i * per_image]), int(positions[(i + 1) * per_image - 1]) + 1, content)
                 for i, content in enumerate(contents))
