"""Data-parallel training on torch.distributed, launched with `torchrun` (gloo on CPU, nccl on GPU).

The recipe does not depend on how many processes run it: `--batch-size` is the GLOBAL micro-batch. Every
rank builds the same windows and the same seeded, length-grouped batch order, then takes its interleaved slice
`batch[rank::world]` of each micro-batch (the batch is sorted by length, so the slices are balanced). The
loss is the mean over all windows of the optimiser step, on every world size: each rank sums its windows'
losses and scales by `world / windows_in_step`, and DDP's gradient average divides by `world` again.
So a run on N processes matches one process with the same flags, up to float summation order (and dropout,
which draws per-rank random numbers).

Only rank 0 writes checkpoints, logs and the progress bar. A checkpoint holds every rank's RNG state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False  # a process group is running (we were started by torchrun)

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def rank_from_env() -> int:
    return int(os.environ.get("RANK", "0"))


def init(device: str) -> tuple[DistEnv, str]:
    """Join the process group torchrun set up; return the environment and this rank's device string."""
    if not launched_by_torchrun():
        return DistEnv(), device
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        # rank 0 alone evaluates and saves while the others wait at a barrier: allow that time
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=2))
    return DistEnv(rank, world, local_rank, True), device


def shutdown(env: DistEnv) -> None:
    if env.active:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def shard(batch: list[int], env: DistEnv) -> tuple[list[int], float]:
    """This rank's slice of a global micro-batch, and its weight (0 for a stand-in when the slice is empty:
    a short last batch may have fewer windows than ranks, and every rank must still join the all-reduce)."""
    mine = batch[env.rank :: env.world]
    return (mine, 1.0) if mine else (batch[:1], 0.0)


def wrap(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    if not env.active:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.local_rank] if next(model.parameters()).is_cuda else None
    return DDP(model, device_ids=ids)


def sum_across(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (loss, tokens, seconds for the log and the time budget)."""
    if not env.active:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(env: DistEnv) -> None:
    if env.active:
        import torch.distributed as dist

        dist.barrier()


def rng_states(env: DistEnv) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG states (CPU, and CUDA where used), gathered for rank 0's checkpoint."""
    own = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        own["rng.cuda"] = torch.cuda.get_rng_state()
    if not env.active:
        return own
    import torch.distributed as dist

    gathered: list[dict | None] = [None] * env.world
    dist.all_gather_object(gathered, own)
    out: dict[str, torch.Tensor] = {}
    for r, states in enumerate(gathered):
        for k, v in (states or {}).items():
            out[k if r == 0 else f"{k}.rank{r}"] = v
    return out


def restore_rng(tensors: dict[str, torch.Tensor], env: DistEnv) -> bool:
    """Set this rank's RNG states from a checkpoint; False when the checkpoint has none for this rank."""
    suffix = "" if env.rank == 0 else f".rank{env.rank}"
    cpu = tensors.get("rng.torch" + suffix)
    if cpu is None:
        return False
    torch.set_rng_state(cpu)
    cuda = tensors.get("rng.cuda" + suffix)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    return True
