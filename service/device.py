"""The device the model runs on: its properties, and the compute dtype that `JANUS_DTYPE=auto` picks for it.

`choose_dtype` is pure (device properties in, choice and reason out), so that the choice for cards this machine
does not have (a V100, an A100, an H100) is tested with their properties; `gpu_properties` asks Paddle for the
real ones.
"""

from __future__ import annotations

from dataclasses import dataclass

# bf16 matrix units arrived with Ampere (compute capability 8.0: A100, A10, L4, RTX 30xx and later). Below it (V100
# 7.0, T4 7.5) bf16 matmuls are emulated or missing, while float16 runs on the tensor cores.
BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True, slots=True)
class DeviceProperties:
    name: str
    capability: tuple[int, int]  # CUDA compute capability (major, minor)
    total_bytes: int  # the card's memory

    @property
    def capability_text(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"

    @property
    def native_bf16(self) -> bool:
        return self.capability >= BF16_CAPABILITY


@dataclass(frozen=True, slots=True)
class DtypeChoice:
    dtype: str  # the arithmetic's dtype
    reason: str  # one sentence for the log, /info and the self-test report


def choose_dtype(requested: str, device: str, gpu: DeviceProperties | None = None) -> DtypeChoice:
    """The compute dtype for `JANUS_DTYPE=requested` on `device` ("cpu" or "gpu", with the card's properties)."""
    if device == "cpu":
        if requested == "auto":
            return DtypeChoice("float32", "auto on the cpu: float32 arithmetic (Paddle's CPU build has no "
                                          "half-precision kernels; a bf16 checkpoint's weights stay bf16)")
        return DtypeChoice(requested, f"JANUS_DTYPE={requested}")
    if gpu is None:
        raise ValueError("the gpu's properties are needed to choose its dtype")
    card = f"{gpu.name} (compute capability {gpu.capability_text})"
    if requested == "auto":
        if gpu.native_bf16:
            return DtypeChoice("bfloat16", f"auto on {card}: bfloat16, which it computes natively")
        return DtypeChoice("float16", f"auto on {card}: float16, since bfloat16 needs compute capability 8.0 or "
                                      "higher for native matrix units")
    if requested == "bfloat16" and not gpu.native_bf16:
        return DtypeChoice("bfloat16", f"JANUS_DTYPE=bfloat16 on {card}, which has no bf16 matrix units: expect "
                                       "slow steps or missing kernels; auto picks float16 there")
    return DtypeChoice(requested, f"JANUS_DTYPE={requested} on {card}")


def gpu_properties(device_id: int = 0) -> DeviceProperties:
    """The current card's properties, from Paddle (a CUDA build only)."""
    import paddle

    props = paddle.device.cuda.get_device_properties(device_id)
    major, minor = paddle.device.cuda.get_device_capability(device_id)
    return DeviceProperties(str(props.name), (int(major), int(minor)), int(props.total_memory))


def parse_bytes(text: str) -> int:
    """'16GiB', '16 GB', '24g', '81920MiB', '1e9' -> bytes. GB and GiB both mean 2**30 here: cards are sold in
    binary gigabytes whatever their label says (a "16 GB" V100 has 16 GiB)."""
    units = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
             "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("kmgtib")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a memory size; write e.g. 16GiB, 24GB or 81920MiB") from None
    if unit not in units or value <= 0:
        raise ValueError(f"{text!r} is not a memory size; write e.g. 16GiB, 24GB or 81920MiB")
    return int(value * units[unit])
