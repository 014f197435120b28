"""The demo model's architecture: Janus-Pro's, small enough to train on two CPU cores within the hour.

Generated pictures are 64 px from an 8 x 8 grid of image tokens (x8 upsampling in the VQ decoder); the vision
encoder sees 64 px in 8 px patches (64 positions per image). Every block is the published one, only narrower and
shallower, so the service's loader and every kernel serve the result unchanged.
"""

from __future__ import annotations

from model.chat_template import DEFAULT_SYSTEM_PROMPT
from model.config import GenHeadConfig, JanusConfig, LanguageConfig, ProjectorConfig, VisionConfig, VQConfig
from model.tokenizer_builder import TINY_CORPUS
from training.scenes import corpus_lines

NAME = "janus-shapes-demo"
# What the service says about this model wherever it says which model it serves.
DESCRIPTION = "a small demo model trained on synthetic shapes, not Janus-Pro"
# Suggestions the playground offers for this model (the checkpoint's playground.json, read by the service).
SUGGESTED_PROMPTS = ("a red circle", "an orange triangle", "a small blue square in the top left corner",
                     "a green triangle on a yellow background", "a large purple circle")
SUGGESTED_QUESTIONS = ("What is in this picture?", "What colour is the shape?", "What shape is it?", "Where is it?")
TEXT_VOCAB = 512
IMAGE_VOCAB = 2048


def demo_config() -> JanusConfig:
    vision = VisionConfig(image_size=64, patch_size=8, width=128, layers=3, heads=4)
    hidden = 256
    vq = VQConfig(image_token_size=IMAGE_VOCAB, n_embed=8, ch=32, ch_mult=[1, 1, 2, 4], z_channels=64,
                  num_res_blocks=0, image_size=64)
    return JanusConfig(
        vision=vision,
        aligner=ProjectorConfig(input_dim=vision.width, n_embed=hidden),
        gen_vision=vq,
        gen_aligner=ProjectorConfig(input_dim=vq.n_embed, n_embed=hidden),
        gen_head=GenHeadConfig(n_embed=hidden, image_token_embed=hidden, image_token_size=vq.image_token_size),
        language=LanguageConfig(hidden_size=hidden, intermediate_size=512, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=4, vocab_size=TEXT_VOCAB,
                                max_position_embeddings=1024),
        name=NAME,
    )


def tokenizer_corpus() -> str:
    """The texts the model reads and writes (the grammar, the questions and answers, the default system prompt,
    weighted as the training uses them), then general English so that other text still splits into words."""
    grammar = corpus_lines()
    # An answer follows "<|Assistant|>:" and so starts with a space, as does a question after the image's line.
    lines = grammar + [f": {line}" for line in grammar] + [DEFAULT_SYSTEM_PROMPT] * 200
    return "\n".join(lines) + "\n" + TINY_CORPUS
