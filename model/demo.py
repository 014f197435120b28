"""Where the demo checkpoint lives: a small Janus trained on synthetic shapes (`python -m training`), committed
with the code in the published layout, so that a server started without a model folder answers and draws
something that makes sense. It is not Janus-Pro: its config says so (`description`), and the service repeats it.
"""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent / "demo_checkpoint"


def demo_model_dir() -> Path:
    """The committed demo checkpoint's folder (FileNotFoundError when the installation lacks it)."""
    if not (DEMO_DIR / "config.json").is_file() or not (DEMO_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(f"the demo checkpoint is missing from {DEMO_DIR}: reinstall janus-serve, or "
                                "retrain it with `python -m training --out model/demo_checkpoint`")
    return DEMO_DIR
