"""Fully sharded data parallel training (torch's FSDP2 ``fully_shard``), the same on CPU and GPU.

``accelerate launch --config_file train/configs/fsdp.yaml`` puts ``ACCELERATE_USE_FSDP`` and the
``FSDP_*`` settings in every process's environment. accelerate shards a prepared model itself only
on accelerators (on CPU its state stays ``MULTI_CPU``), so the training scripts shard here, on any
device, and leave accelerate to launch the processes, form the process group and autocast:

- every block of the model (the children of its ``*blocks`` module lists and each ``mid_block``:
  SD3's joint blocks, a DiT's blocks, the DA-VAE's encoder and decoder blocks) becomes an FSDP
  unit: its parameters are sharded over the processes, gathered for its forward and backward, and
  its gradients reduce-scattered;
- every other parameter (patch embedder, output head, embedders, the VAE's first and last
  convolutions: a few per cent of a transformer) is replicated, as DDP would keep it, and its
  gradient averaged over the processes by :meth:`Sharded.sync_grads`. The fused patch-embed and
  head kernels therefore see plain tensors, and the weights the adaptive loss weights differentiate
  against (:class:`~davae_ext.training.losses.AlignWeight`) stay ordinary parameters.

The state helpers below (:func:`full_tensor`, :func:`full_state`, :func:`load_full`,
:func:`full_optimizer_state`, :func:`load_optimizer_state`) work on sharded and plain models
alike: checkpoints hold full tensors in the layout a single-process run writes, so a sharded run's
checkpoint resumes in one process and the other way round. On a sharded model they are collective:
every process must call them, in the same order.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

ENV_FLAG = "ACCELERATE_USE_FSDP"


def fsdp_requested(accelerator) -> bool:
    """Whether this run shards: accelerate's launcher asked for FSDP (its config or
    ``--use_fsdp``) and there is more than one process."""
    if accelerator.num_processes < 2:
        return False
    return os.environ.get(ENV_FLAG, "false").lower() == "true" or accelerator.distributed_type.name == "FSDP"


def reshard_after_forward_from_env() -> bool:
    """``FSDP_RESHARD_AFTER_FORWARD`` (FSDP2's boolean, or FSDP1's strategy names): True frees a
    unit's gathered weights after its forward (full shard, ZeRO-3), False keeps them for the
    backward (ZeRO-2: more memory, one all-gather fewer)."""
    value = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", os.environ.get("FSDP_SHARDING_STRATEGY", "true"))
    value = value.strip().lower()
    if value in ("true", "1", "full_shard"):
        return True
    if value in ("false", "0", "shard_grad_op", "no_shard"):
        return False
    raise ValueError(f"FSDP_RESHARD_AFTER_FORWARD: expected true / false (or FULL_SHARD / SHARD_GRAD_OP), got {value!r}")


def block_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's blocks, outermost first, none inside another: each child of a ``ModuleList``
    whose name ends in ``blocks``, and each ``mid_block``."""
    units: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(name.startswith(u + ".") for u, _ in units):
            continue
        parent, _, leaf = name.rpartition(".")
        in_block_list = parent.rpartition(".")[2].endswith("blocks") and leaf.isdigit()
        if in_block_list or leaf == "mid_block":
            units.append((name, module))
    return units


class Sharded:
    """``model``'s blocks sharded in place with ``fully_shard`` (the rest replicated; see the
    module docstring). Build the optimiser after this: sharding replaces the block parameters."""

    def __init__(self, model: nn.Module, device: torch.device, reshard_after_forward: Optional[bool] = None,
                 methods: Sequence[str] = (), replicate: Sequence[str] = ()):
        """``methods``: names of methods other than ``forward`` that the training step calls on
        ``model`` directly (the DA-VAE's ``base_reconstruction``): they get FSDP's root hooks too.
        ``replicate``: modules inside a block that the model also calls from outside that block's
        forward (diffusers' DiT computes its output conditioning with
        ``transformer_blocks[0].norm1.emb``): their parameters stay replicated."""
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        if not torch.distributed.is_initialized():
            raise RuntimeError("FSDP needs the process group accelerate forms: launch with accelerate launch or torchrun")
        if os.environ.get("FSDP_VERSION", "2") != "2":
            warnings.warn("FSDP_VERSION 1 was asked for; the scripts shard with FSDP2 (fully_shard)", stacklevel=2)
        units = block_units(model)
        if not units:
            raise ValueError(f"FSDP: {type(model).__name__} has no blocks to shard (no '*blocks' module list or "
                             "'mid_block')")
        reshard = reshard_after_forward_from_env() if reshard_after_forward is None else reshard_after_forward
        model.to(device)
        kept = {id(p) for name in replicate for p in model.get_submodule(name).parameters()}
        in_units = {id(p) for _, u in units for p in u.parameters()} - kept
        self.replicated = [p for p in model.parameters() if id(p) not in in_units]
        for _, unit in units:
            ignored = {p for p in unit.parameters() if id(p) in kept}
            fully_shard(unit, reshard_after_forward=reshard, ignored_params=ignored or None)
        fully_shard(model, reshard_after_forward=reshard, ignored_params=set(self.replicated))
        for method in methods:
            register_fsdp_forward_method(model, method)
        self.model, self.units = model, [n for n, _ in units]
        self.world = torch.distributed.get_world_size()

    def sync_grads(self) -> None:
        """Average the replicated parameters' gradients over the processes (call after backward)."""
        average_grads(self.replicated)

    @staticmethod
    @torch.no_grad()
    def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> float:
        """The global gradient norm over sharded and replicated gradients (one all-reduce),
        gradients scaled down to ``max_norm`` when above it, as ``torch.nn.utils.clip_grad_norm_``."""
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in params if p.grad is not None]
        device = grads[0].device if grads else torch.device("cpu")
        sharded = torch.zeros((), device=device, dtype=torch.float32)
        replicated = torch.zeros((), device=device, dtype=torch.float32)
        for g in grads:
            if isinstance(g, DTensor):
                sharded += g.to_local().float().pow(2).sum()
            else:
                replicated += g.float().pow(2).sum()
        torch.distributed.all_reduce(sharded)
        norm = float((sharded + replicated).sqrt())
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for g in grads:
                (g.to_local() if isinstance(g, DTensor) else g).mul_(coef)
        return norm


@torch.no_grad()
def average_grads(params: Iterable[torch.Tensor]) -> None:
    """Average the gradients of ``params`` (plain, replicated tensors) over the processes: one
    all-reduce of them flattened together, as DDP's bucket."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (gathered from every process when sharded), detached, on the CPU. A whole
    CPU tensor comes back as itself, not a copy (a checkpoint's state is written before the next
    step; a copy of every trained tensor and its optimiser state is 3.9 GB at SD3.5-Medium's size
    with LoRA rank 256)."""
    if is_sharded(t):
        t = t.full_tensor()
    return t.detach().cpu()


def shard_like(full: torch.Tensor, like: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``full`` laid out like ``like``: this process's shard of it when ``like`` is sharded, else
    ``full`` itself (on ``like``'s device, in ``dtype``, by default ``like``'s)."""
    full = full.to(device=like.device, dtype=dtype or like.dtype)
    if is_sharded(like):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
    return full


def full_state(named: Iterable[tuple[str, torch.Tensor]]) -> dict:
    """``{name: full tensor}`` for ``named`` (collective when any is sharded)."""
    return {n: full_tensor(t) for n, t in named}


@torch.no_grad()
def load_full(named: Iterable[tuple[str, torch.Tensor]], state: dict) -> None:
    """Copy full tensors from ``state`` into the tensors ``named`` lists (sharded or not); names
    missing from ``state`` are left as they are."""
    for n, t in named:
        if n in state:
            src = shard_like(state[n], t)
            (t.to_local() if is_sharded(t) else t).copy_(src.to_local() if is_sharded(src) else src)


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """``opt.state_dict()`` with every sharded state tensor gathered whole."""
    state = opt.state_dict()
    return {"state": {i: {k: full_tensor(v) if torch.is_tensor(v) else v for k, v in s.items()}
                      for i, s in state["state"].items()},
            "param_groups": state["param_groups"]}


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a :func:`full_optimizer_state` (or a plain ``state_dict``) into ``opt``, sharding
    each per-parameter tensor as its parameter is."""
    opt.load_state_dict(state)
    for group in opt.param_groups:
        for p in group["params"]:
            if is_sharded(p):
                s = opt.state.get(p, {})
                for k, v in list(s.items()):
                    if torch.is_tensor(v) and not is_sharded(v) and v.shape == p.shape:
                        s[k] = shard_like(v, p, dtype=v.dtype)


__all__ = ["fsdp_requested", "reshard_after_forward_from_env", "block_units", "Sharded", "average_grads", "is_sharded", "full_tensor",
           "shard_like", "full_state", "load_full", "full_optimizer_state", "load_optimizer_state"]
