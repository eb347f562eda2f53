"""Speed and memory against sequence length, at matched parameter counts.

What is measured, per architecture and length L (batch B, the copy-memory models of tasks.py):

- training throughput: tokens/s = B * L / (median time of one forward + backward + Adam step);
- inference latency per token: median time of one no-grad forward over the whole sequence,
  divided by L (the cost of reading a sequence, per position);
- activation memory: the bytes of every tensor autograd saves for the backward pass during one
  training forward (``torch.autograd.graph.saved_tensors_hooks``, storage counted once). It is the
  part of training memory that grows with L; weights, gradients and optimizer state (fixed by the
  parameter count, matched here) and short-lived temporaries are not in it. We count it this way
  because the CPU allocator keeps no peak statistics and ``ru_maxrss`` only ever grows for the
  whole process, so neither can attribute memory to one run.

Each timing warms up once, then takes the median of ``repeats`` runs; forward and backward of the
training step are also reported apart. A length is skipped (and recorded as skipped, with the
reason) once the previous length's training step took longer than ``max_step_seconds``. (The attention
matrices are not what limits length here: the fused attention kernel does not keep the L x L
weights for backward, which the activation-memory column shows.)
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch

from .tasks import MemoryConfig, MemoryModel, build_memory_model, make_batch, task_loss


def _median_time(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up: first-call allocation and dispatch
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def activation_bytes(model: MemoryModel, x: torch.Tensor, y: torch.Tensor, task: str = "copy") -> int:
    """Bytes autograd saves for backward in one training forward (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. sparse)
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = task_loss(task, model(x), y)
    del loss
    # parameters are saved by reference too, but are not activation memory
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def measure_speed(arch: str, lengths: list[int], *, batch_size: int = 8, repeats: int = 3,
                  target_params: int = 16_000, max_step_seconds: float = 5.0,
                  seed: int = 0, tick: Optional[Callable[[], None]] = None) -> dict:
    """Per-length throughput, latency and activation memory for one architecture (see module doc).

    Forward and backward of the training step are timed separately (medians over ``repeats`` after
    a warm-up).
    """
    torch.manual_seed(seed)
    # T = L - 20 gives a copy-memory sequence of exactly L steps
    cfg = MemoryConfig("copy", arch, max(2, lengths[0] - 20), target_params=target_params)
    model = build_memory_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    rows = []
    skip: Optional[str] = None
    for L in lengths:
        if skip is not None:
            rows.append({"length": L, "skipped": skip})
            if tick:
                tick()
            continue
        x, y = make_batch("copy", batch_size, L - 20, seed=seed)
        phases: dict[str, list[float]] = {"forward": [], "backward": [], "step": []}

        def train_step(record: bool) -> None:
            t0 = time.perf_counter()
            loss = task_loss("copy", model(x), y)
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            if record:
                phases["forward"].append(t1 - t0)
                phases["backward"].append(t2 - t1)
                phases["step"].append(t3 - t0)

        train_step(False)  # warm-up
        for _ in range(repeats):
            train_step(True)
        t_train = statistics.median(phases["step"])

        @torch.no_grad()
        def infer():
            model(x)

        model.eval()
        t_infer = _median_time(infer, repeats)
        model.train()
        rows.append({
            "length": L,
            "train_step_s": t_train,
            "forward_s": statistics.median(phases["forward"]),
            "backward_s": statistics.median(phases["backward"]),
            "train_step_min_s": min(phases["step"]),
            "train_tokens_per_s": batch_size * L / t_train,
            "infer_s": t_infer,
            "infer_latency_per_token_s": t_infer / L,
            "activation_bytes": activation_bytes(model, x, y),
        })
        if t_train > max_step_seconds:
            skip = f"the previous length took {t_train:.1f} s per training step, over the {max_step_seconds} s allowed"
        if tick:
            tick()
    return {"arch": arch, "batch_size": batch_size, "repeats": repeats,
            "params": sum(p.numel() for p in model.parameters()),
            "width": model.width, "threads": torch.get_num_threads(), "rows": rows}
