"""Which torch device runs the local model and LoRA training, and in which dtype.

`"auto"` picks the first CUDA device when torch sees one and the CPU otherwise; `"cpu"`,
`"cuda"` and `"cuda:N"` name one. A named CUDA device the machine does not have is refused
with what it does have. torch is imported only when a device is resolved.

dtypes: inference runs in bfloat16 everywhere (`INFERENCE_DTYPE`); training keeps fp32
weights on a CPU (bf16 matmuls there are no faster and lose precision in the backward pass)
and bf16 weights on a GPU, with the LoRA weights themselves in fp32 (peft's default).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

#: what a device setting may say
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"
DEVICE_HELP = "auto (CUDA when torch sees a GPU, else CPU), cpu, cuda or cuda:N"
#: the local model's weights at inference, on any device. On a CPU too, by measurement
#: (benchmarks/bench_batching.py --passes, 2 cores with AVX-512 BF16 and no AMX): bf16
#: prefills 969 tokens/s against fp32's 447, while fp32 decodes faster in large batches (a
#: pass of 8 rows: 78 ms against 137). Local episodes spend more time prefilling than
#: decoding (about half their wall time alone, two thirds batched), so bf16. bf16 is also
#: the dtype in which decoding is batch- and cache-invariant here (`invariant.py`: bf16 GEMMs
#: of up to 32 rows give every row the bits it gets alone; fp32 GEMMs do not, from 2 rows on).
INFERENCE_DTYPE = "bfloat16"
_SHORT = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}


def check_device(device: str) -> str:
    """`device` if it is a valid setting (without looking at the machine), else ValueError."""
    if not isinstance(device, str) or not re.match(DEVICE_PATTERN, device):
        raise ValueError(f"device must be {DEVICE_HELP}; got {device!r}")
    return device


#: a device setting as a pydantic field type (its error says what is valid)
DeviceSetting = Annotated[str, AfterValidator(check_device)]


def resolve_device(device: str = "auto") -> str:
    """The torch device string for a setting: `auto` becomes `cuda` or `cpu`. ValueError when
    the setting is invalid or names a CUDA device this machine lacks."""
    check_device(device)
    if device == "cpu":
        return "cpu"
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        return "cuda" if count else "cpu"
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        have = f"{count} CUDA device(s)" if count else "no CUDA device (torch.cuda.is_available() is False)"
        raise ValueError(f"device {device!r} is not available: this machine has {have}; use device auto or cpu")
    return device


def kind(device: str) -> str:
    """`cuda:1` -> `cuda`: what decides the numerics, recorded in model ids and cache keys."""
    return device.partition(":")[0]


def training_dtype(device: str) -> str:
    """Dtype of the base weights during LoRA training on a resolved `device`."""
    return "float32" if kind(device) == "cpu" else "bfloat16"


def short_dtype(dtype: str) -> str:
    """`bfloat16` -> `bf16` (for model ids)."""
    return _SHORT.get(dtype, dtype)
