"""Where learners compute: `cuda` when a GPU was assigned, the CPU otherwise; and how a CPU process is set up
for it (its torch threads, its allocator)."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import numpy as np
import torch


def select_device(gpu_ids=None) -> torch.device:
    """`gpu_ids`: the GPUs Ray assigned to this process (`ray.get_gpu_ids()`), or None outside Ray."""
    if gpu_ids is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda") if len(gpu_ids) > 0 and torch.cuda.is_available() else torch.device("cpu")


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """This machine's CPU model name (Linux's `cpuinfo`), else what `platform` knows, else 'unknown'.

    With `torch.backends.cpu.get_cpu_capability()` (the vector instructions torch's kernels use) it says which
    arithmetic a run did: another kind of CPU gets other torch kernels and another MKL code path, whose sums
    round differently, so a seed repeats to the bit only on the same kind (docs/design.md §5)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_kind() -> str:
    """This process's kind of CPU as far as its arithmetic goes: the model and torch's kernel level, e.g.
    'AMD EPYC 7B13 (avx2)'. The learners report theirs, which on a cluster may not be the driver's."""
    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()})"


def set_threads(cpus: float) -> None:
    """One torch thread per allotted CPU: oversubscribed threads slow batched matmuls ~12× here."""
    torch.set_num_threads(max(1, int(cpus)))


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks below it come from the heap, not from a fresh mmap
_TRIM_THRESHOLD = 1 << 30  # free heap memory up to this much is kept, not handed back to the OS


def keep_freed_memory() -> bool:
    """Make glibc keep the memory a process frees for its next allocations; False where that is not glibc.

    A policy update allocates and frees the same few-MB activations every time (H × E × B rows through the
    critic); by default glibc returns them to the OS and every update page-faults them in afresh: ≈ 6,000
    page faults per Hopper update, ≈ 17–20 % of its time on this machine (`benchmarks/policy_update.py` times
    both). With fixed thresholds the heap keeps them (and glibc stops adapting the thresholds on its own).
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or one without mallopt (not glibc)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    # np.array copies: arrays from Ray's object store are read-only views.
    return {k: torch.as_tensor(np.array(v, dtype=np.float32), device=device) for k, v in batch.items()}


def state_to_cpu(state: dict) -> dict:
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state.items()}
