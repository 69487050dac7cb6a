"""Where learners compute: `cuda` when a GPU was assigned, the CPU otherwise."""

from __future__ import annotations

import numpy as np
import torch


def select_device(gpu_ids=None) -> torch.device:
    """`gpu_ids`: the GPUs Ray assigned to this process (`ray.get_gpu_ids()`), or None outside Ray."""
    if gpu_ids is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda") if len(gpu_ids) > 0 and torch.cuda.is_available() else torch.device("cpu")


def set_threads(cpus: float) -> None:
    """One torch thread per allotted CPU: oversubscribed threads slow batched matmuls ~12× here."""
    torch.set_num_threads(max(1, int(cpus)))


def to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    # np.array copies: arrays from Ray's object store are read-only views.
    return {k: torch.as_tensor(np.array(v, dtype=np.float32), device=device) for k, v in batch.items()}


def state_to_cpu(state: dict) -> dict:
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state.items()}
