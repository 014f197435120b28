"""Writes the tokenizer and processor files of a tiny Janus checkpoint (tests, demos) without any download.

The tokenizer is a byte-level BPE trained on a small embedded English text, so every string (any language,
emoji) still encodes, just in more pieces. Janus's special tokens are added after the trained vocabulary, as
in DeepSeek's tokenizer. Output is byte-for-byte reproducible.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tokenizers.pre_tokenizers import ByteLevel

from model.special_tokens import BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, PAD_TOKEN, TINY_SPECIAL_TOKENS

TINY_CORPUS = """\
A small red fox sat beside a green tree and looked at the bright blue sky. The picture shows a quiet field
with tall yellow grass, a wooden fence and two brown horses eating near a white barn. What colour is the
car in this image? The car is red, the bicycle is black and the bus behind them is orange.
Describe the photo in detail. There is a kitchen table with a bowl of apples, a glass of water, a loaf of
bread and a knife. Sunlight comes through the window and makes long shadows on the floor.
How many cats are in the picture? I can see three cats: a grey kitten sleeping on a pillow, an old black
cat on the chair and a striped cat that is watching a bird outside.
An image is made of pixels, and every pixel has a red, a green and a blue value. Light colours have high
values, dark colours have low values. Purple mixes red and blue; pink is a pale red; brown is a dark orange.
The painting shows a harbour at sunset. Small boats float on calm water, seagulls fly over the masts, and
the clouds turn gold, then pink, then violet as the evening grows darker.
Is the dog running or sitting? The dog is running across the beach with a stick in its mouth, and its wet
fur shines in the morning light. Waves break on the sand behind it.
A city street at night: yellow taxis, people with umbrellas, shop windows full of shoes and coats, and
neon signs reflected in the puddles after the rain.
Question: what is on the desk? Answer: a laptop, a cup of coffee, a pair of glasses, a notebook with a pen,
a small plant in a clay pot and a lamp that is switched on.
The elephant is the largest animal in the photo. Next to it stand a giraffe with a long neck, a zebra with
black and white stripes and a lion resting in the shade of a tree.
Generate an image of a mountain lake in winter, with snow on the pine trees, ice on the water and a small
cabin with smoke rising from its chimney under a clear sky full of stars.
Which object is closest to the camera? The flowers in the vase are closest; the sofa and the bookshelf
are further away, and the door at the back of the room is the furthest.
Draw a cartoon of a happy robot holding a balloon. Make the robot silver with round blue eyes, and make the
balloon bright red with a thin string.
The chart compares the number of apples, oranges and bananas sold each month. Bananas sell the most in
summer, apples in autumn, and oranges stay about the same all year.
A child is flying a kite in the park. The kite is shaped like a fish, with green and yellow scales and a
long tail that dances in the wind above the playground and the pond.
Please answer briefly. Is it day or night? It is day. Is the sky clear or cloudy? It is cloudy. Are there
people? Yes, two people are walking a dog along the river path.
"""


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 512, corpus: str = TINY_CORPUS) -> Path:
    """Train and write tokenizer.json, tokenizer_config.json and special_tokens_map.json; returns out_dir.

    `vocab_size` counts the special tokens too; the embedded text supports sizes up to 967. `corpus`: the text the
    byte-level BPE learns its merges from (a model trained on its own texts gets a tokenizer made from them).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    alphabet = ByteLevel.alphabet()
    trained_size = vocab_size - len(TINY_SPECIAL_TOKENS)
    if trained_size < len(alphabet):
        raise ValueError(f"vocab_size must be at least {len(alphabet) + len(TINY_SPECIAL_TOKENS)} "
                         f"(256 byte tokens + {len(TINY_SPECIAL_TOKENS)} special tokens), got {vocab_size}")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # No special tokens during training: they join the vocabulary afterwards, above the trained ids.
    trainer = trainers.BpeTrainer(vocab_size=trained_size, initial_alphabet=alphabet, show_progress=False)
    tokenizer.train_from_iterator(corpus.splitlines(keepends=True), trainer=trainer)
    if tokenizer.get_vocab_size() != trained_size:
        raise ValueError(f"the corpus supports at most {tokenizer.get_vocab_size()} trained tokens; "
                         f"vocab_size {vocab_size} needs {trained_size}")
    tokenizer.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    # Like DeepSeek's file: a consumer that honours the post-processor gets BOS once.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)])
    (out / "tokenizer.json").write_text(tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")

    _write_json(out / "tokenizer_config.json", {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS_TOKEN,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "legacy": True,
        "model_max_length": 16384,
        "pad_token": PAD_TOKEN,
        "tokenizer_class": "LlamaTokenizerFast",
        "unk_token": None,
        "use_default_system_prompt": False,
    })
    _write_json(out / "special_tokens_map.json", {
        "additional_special_tokens": [t for t in TINY_SPECIAL_TOKENS
                                      if t not in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)],
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
    })
    return out


def write_preprocessor_config(out_dir: str | Path, image_size: int = 384) -> Path:
    """Janus-Pro's image preprocessing values (mean/std 0.5) at the given square size."""
    mean = [0.5, 0.5, 0.5]
    return _write_json(Path(out_dir) / "preprocessor_config.json", {
        "background_color": [int(m * 255) for m in mean],
        "do_normalize": True,
        "image_mean": mean,
        "image_processor_type": "VLMImageProcessor",
        "image_size": image_size,
        "image_std": [0.5, 0.5, 0.5],
        "min_size": 14,
        "processor_class": "VLChatProcessor",
        "rescale_factor": 1.0 / 255.0,
    })


def write_processor_config(out_dir: str | Path, num_image_tokens: int = 576,
                           chat_template: str = "deepseek") -> Path:
    """The chat processor's settings; a "legacy" template is recorded as DeepSeek's `deepseek_old` format."""
    if chat_template not in ("deepseek", "legacy"):
        raise ValueError(f"chat_template must be 'deepseek' or 'legacy', got {chat_template!r}")
    return _write_json(Path(out_dir) / "processor_config.json", {
        "add_special_token": False,
        "ignore_id": -100,
        "image_tag": IMAGE_TOKEN,
        "mask_prompt": True,
        "num_image_tokens": num_image_tokens,
        "processor_class": "VLChatProcessor",
        "sft_format": "deepseek" if chat_template == "deepseek" else "deepseek_old",
    })


def _write_json(path: Path, content: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(content, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    path.write_text(text, encoding="utf-8")
    return path
