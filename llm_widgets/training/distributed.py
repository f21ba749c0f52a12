"""The gradient monitor on many processes (torch.distributed: DDP, and FSDP2's `fully_shard`).

Every rank runs the same monitor. Each step, one all-reduce turns what each rank holds into the
full gradient's per-group norms: under FSDP a rank holds a shard of each gradient, so squared
shard norms are summed over ranks; under DDP every rank holds the whole (averaged) gradient, so
rank 0's count. The same vector carries each rank's step time, forward time, loss and step count
(stragglers, the rank a bad batch came from, a rank that skipped a step). Steering factors are
decided on rank 0 and broadcast, so every rank applies the same.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import InputError, WrongTypeError

PER_RANK = ("seconds", "forward_seconds", "loss", "nonfinite_loss", "step")
_created = itertools.count()  # monitors made in this process: each rank makes them in the same order


def _dtensor(t: Any) -> bool:
    return hasattr(t, "to_local") and hasattr(t, "placements")


def unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (the same parameters)."""
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


class Cluster:
    """Where this process stands (rank, world size) and the step's collectives; inactive alone."""

    def __init__(self, module: torch.nn.Module, distributed: Any, timeout: float):
        if distributed not in ("auto", True, False):
            raise WrongTypeError(f"distributed must be 'auto', True or False; got {distributed!r}")
        ready = dist.is_available() and dist.is_initialized()
        if distributed is True and not ready:
            raise InputError(
                "distributed=True, but torch.distributed's process group is not initialised: call "
                "torch.distributed.init_process_group(...) first (torchrun and accelerate launch set up "
                "what it reads), or leave distributed='auto' to monitor this process alone"
            )
        self.active = bool(ready and distributed is not False and dist.get_world_size() > 1)
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1
        self.device = torch.device("cpu")
        if self.active:
            _refuse_fsdp1(module)
            if dist.get_backend() == "nccl":
                self.device = torch.device("cuda", torch.cuda.current_device())
            self._handshake(timeout)

    def _handshake(self, timeout: float) -> None:
        """Every rank must attach the monitor (a collective every step): checked once, through the
        process group's store, with a timeout instead of a hang."""
        store = dist.distributed_c10d._get_default_store()  # pyright: ignore[reportPrivateUsage]
        prefix = f"llm_widgets/monitor/{next(_created)}"
        store.set(f"{prefix}/{self.rank}", "1")
        keys = [f"{prefix}/{r}" for r in range(self.world)]
        try:
            store.wait(keys, timedelta(seconds=timeout))
        except Exception:  # the store's timeout error type differs between backends and releases
            missing = [r for r, key in enumerate(keys) if not store.check([key])]
            raise InputError(
                f"GradientMonitor is attached on rank {self.rank} but not on rank(s) {missing} (waited {timeout:g} s): "
                f"every rank must create it (it reduces the gradient norms over all ranks each step). Create it in "
                f"the code every rank runs, or pass distributed=False to monitor one rank's own view"
            ) from None

    def local(self, grad: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The part of a gradient this rank holds, and whether ranks hold different shards of it."""
        if _dtensor(grad):
            sharded = any(type(p).__name__ in ("Shard", "_StridedShard") for p in grad.placements)  # pyright: ignore
            return grad.to_local(), sharded  # pyright: ignore[reportAttributeAccessIssue]
        return grad, False

    def reduce(self, sharded: torch.Tensor, replicated: torch.Tensor, mine: dict[str, float]):
        """Per-group squared norms of the full gradient, and each rank's figures {name: [per rank]}."""
        if not self.active:
            return sharded + replicated, {k: [v] for k, v in mine.items()}
        n = len(sharded)
        vec = torch.zeros(n + len(PER_RANK) * self.world, dtype=torch.float64)
        vec[:n] = sharded.double() + (replicated.double() if self.rank == 0 else 0)
        for i, name in enumerate(PER_RANK):
            vec[n + i * self.world + self.rank] = float(mine[name])
        vec = vec.to(self.device)
        dist.all_reduce(vec)
        vec = vec.cpu()
        ranks = {name: vec[n + i * self.world : n + (i + 1) * self.world].tolist() for i, name in enumerate(PER_RANK)}
        steps = ranks["step"]
        if len(set(steps)) > 1:
            raise RuntimeError(
                f"the ranks' monitors are at different steps ({dict(enumerate(int(s) for s in steps))}): every rank "
                f"must call monitor.step() once per optimizer step"
            )
        return vec[:n].float(), ranks

    def from_rank0(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's values on every rank (steering decided once)."""
        if not self.active:
            return tensor
        moved = tensor.double().to(self.device)
        dist.broadcast(moved, src=0)
        return moved.cpu().to(tensor.dtype)

    def from_rank(self, value: Any, src: int) -> Any:
        """A Python object (an incident's batch) from rank `src` on every rank."""
        if not self.active:
            return value
        box = [value if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.device if self.device.type == "cuda" else None)
        return box[0]


def _refuse_fsdp1(module: torch.nn.Module) -> None:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover (a torch build without it)
        return
    if any(isinstance(m, FullyShardedDataParallel) for m in module.modules()):
        raise InputError(
            "this model is wrapped in FSDP1 (FullyShardedDataParallel), whose flat parameters hide which layer a "
            "gradient belongs to: use FSDP2 (torch.distributed.fsdp.fully_shard; accelerate: fsdp_version: 2), "
            "which keeps every parameter by its name"
        )
