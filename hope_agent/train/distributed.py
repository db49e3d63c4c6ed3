"""Data-parallel training: the ``World`` a run lives in (one process, or ``torchrun`` ranks).

A run of ``N`` ranks is one run of ``N x num_envs`` envs split over processes (docs/scaling.md):
every rank builds the same agent and steps its own envs; PPO averages each minibatch's gradients
over the ranks weighted by their valid steps, and the normalisers merge their batch moments, so
weights and statistics stay identical across ranks; rank 0 alone logs and writes. A single
process uses :data:`LOCAL`, whose operations are identities.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from hope_agent.agents.normalize import RunningMeanStd
from hope_agent.train.logger import Logger

T = TypeVar("T")


class World:
    """The processes of one run; this base class is the single process (rank 0 of 1).

    Its collectives are identities, so code written against a ``World`` runs unchanged, and
    unchanged in its results, without ``torch.distributed``.
    """

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process logs, writes results and checkpoints (rank 0)."""
        return self.rank == 0

    def sum(self, tensor: Tensor) -> Tensor:
        """The elementwise sum of ``tensor`` over the ranks (a new tensor)."""
        return tensor.clone()

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        return [obj]

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on some rank."""
        return bool(self.sum(torch.tensor([float(flag)], dtype=torch.float64)).item() > 0)

    def average_gradients(self, params: Sequence[Tensor], weight: float) -> None:
        """Replace each gradient by the ``weight``-weighted mean of the ranks' gradients.

        PPO's losses are means over a minibatch's valid steps, so weighting by that count makes
        the result the gradient of the loss over all ranks' steps together.
        """

    def merge_moments(self, count: float, mean: Tensor, m2: Tensor) -> tuple[float, Tensor, Tensor]:
        """The moments (count, mean, sum of squared deviations) of the union of every rank's
        batch, given this rank's."""
        return count, mean, m2

    def close(self) -> None:
        """Leave the process group (nothing to do for one process)."""


LOCAL = World()


class ProcessGroupWorld(World):
    """The ranks of a ``torch.distributed`` process group (``gloo`` on CPU, ``nccl`` on GPU).

    Args:
        rank: this process's rank.
        size: the number of processes.
        device: where the collectives' tensors live (a CUDA device for ``nccl``).
    """

    def __init__(self, rank: int, size: int, device: torch.device) -> None:
        if not dist.is_initialized():
            raise RuntimeError(
                "ProcessGroupWorld needs an initialised process group: call init_world() "
                "(or torch.distributed.init_process_group) first"
            )
        self.rank, self.size, self.device = rank, size, device

    def sum(self, tensor: Tensor) -> Tensor:
        """The elementwise sum of ``tensor`` over the ranks (a new tensor on its device)."""
        out = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(tensor.device)

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        dist.barrier()

    def average_gradients(self, params: Sequence[Tensor], weight: float) -> None:
        """Replace each gradient by the ``weight``-weighted mean over the ranks (one flat
        all-reduce; parameters without a gradient have none on every rank: same model, same
        loss terms)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.device)
        # The total weight rides in the same all-reduce as the weighted gradients.
        packed = torch.cat([flat * weight, flat.new_tensor([weight])])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        total = packed[-1]
        mean = packed[:-1] / total.clamp_min(1e-12)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(mean[offset : offset + n].view_as(g))
            offset += n

    def merge_moments(self, count: float, mean: Tensor, m2: Tensor) -> tuple[float, Tensor, Tensor]:
        """Chan et al.'s parallel merge: sums of counts, of ``count * mean`` and of
        ``m2 + count * mean^2`` over the ranks give the union's moments."""
        dtype = torch.float64
        mean64, m264 = mean.to(dtype), m2.to(dtype)
        c = torch.tensor([count], dtype=dtype, device=mean.device)
        packed = torch.cat(
            [c, (mean64 * count).reshape(-1), (m264 + count * mean64**2).reshape(-1)]
        )
        total = self.sum(packed)
        n = int(mean.numel())
        total_count = float(total[0])
        if total_count == 0:
            return 0.0, torch.zeros_like(mean64), torch.zeros_like(m264)
        union_mean = (total[1 : 1 + n] / total_count).view_as(mean64)
        union_m2 = (total[1 + n :] - total_count * union_mean.reshape(-1) ** 2).view_as(m264)
        return total_count, union_mean, union_m2.clamp_min(0.0)

    def close(self) -> None:
        """Leave the process group."""
        if dist.is_initialized():
            dist.destroy_process_group()


def init_world(device: torch.device, timeout_s: float = 1800.0) -> World:
    """The world of this process: :data:`LOCAL` unless launched by ``torchrun`` (``WORLD_SIZE``
    > 1 in the environment), then a process group over the ranks.

    ``nccl`` is used when ``device`` is CUDA (each rank on GPU ``LOCAL_RANK``), ``gloo``
    otherwise. NVLink multicast (NVLS) is turned off unless the caller set
    ``NCCL_NVLS_ENABLE``: the machines we run on do not support it (docs/scaling.md).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return LOCAL
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        backend, comm = "nccl", torch.device("cuda", local_rank)
    else:
        backend, comm = "gloo", torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return ProcessGroupWorld(rank, size, comm)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own randomness (action noise): ``seed`` itself on rank 0, so
    that rank 0 and a single process draw alike."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def share_normalizers(module: torch.nn.Module, world: World) -> None:
    """Make every running normaliser in ``module`` merge its batches over ``world``'s ranks."""
    if world.size == 1:
        return
    for m in module.modules():
        if isinstance(m, RunningMeanStd):
            m.merge_batches = world.merge_moments


class RankLogger(Logger):
    """The logger of ranks other than 0: it records nothing and writes nothing (rank 0 writes
    ``train.csv`` and TensorBoard for the run)."""

    def __init__(self, total_steps: int) -> None:
        # Never written to: every writing method is a no-op here.
        super().__init__(Path(os.devnull), total_steps, tensorboard=False, progress=False)

    def log(self, global_step: int, values: Mapping[str, float]) -> None:
        """Drop the scalars (rank 0 logs)."""

    def flush(self) -> None:
        """Nothing to write."""

    def restore(self, rows: int, columns: Sequence[str], purge_step: int) -> None:
        """Nothing to restore (rank 0 owns ``train.csv``)."""

    def print_summary(self, *args: Any, **kwargs: Any) -> None:
        """Rank 0 prints the summary."""


def sweep_placement(
    job_num: int, n_jobs: int, torch_threads: int, gpus: int, cores: int | None = None
) -> tuple[int, int | None]:
    """Torch threads and GPU of job ``job_num`` of a sweep running ``n_jobs`` jobs at once.

    ``torch_threads`` > 0 is kept; otherwise the job takes ``cores // n_jobs`` threads (at
    least 1; ``n_jobs`` <= 0 means one job per core, as joblib reads -1), so the jobs do not
    oversubscribe the cores this process may use (``cores``, default: its CPU affinity). With
    ``gpus`` > 1 the jobs are dealt over the GPUs round-robin; with one GPU every job shares
    it (``None``: leave the device as it is).
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        cores = cores or 1
    parallel = n_jobs if n_jobs > 0 else cores
    threads = torch_threads if torch_threads > 0 else max(1, cores // parallel)
    gpu = job_num % gpus if gpus > 1 else None
    return threads, gpu
