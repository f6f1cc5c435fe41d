"""The second outer loop's training core: a curation program (data selection, composition
and LoRA settings as one decision), the dataset it builds from the archive, and LoRA
training of the memory specialist.

Submodules import torch/transformers/peft only inside the functions that train, so
importing this package is cheap.
"""

from agent_core.training.dataset import DatasetInfo, build_dataset
from agent_core.training.lora import TrainResult, train_lora
from agent_core.training.program import (
    Composition,
    CurationProgram,
    LoraSettings,
    ProgramError,
    RoutineMix,
    check_lora,
    parse_program,
    pool_digest,
    rule_based_program,
)

__all__ = [
    "Composition", "CurationProgram", "DatasetInfo", "LoraSettings", "ProgramError", "RoutineMix",
    "TrainResult", "build_dataset", "check_lora", "parse_program", "pool_digest",
    "rule_based_program", "train_lora",
]
