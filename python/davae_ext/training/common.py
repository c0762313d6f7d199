"""Pieces both training loops share: deterministic per-step batches and noise (so a resumed run
sees exactly what an uninterrupted one would), atomic checkpoints, a resumable CSV log, the
:class:`TrainingRun` bookkeeping around a loop, image grids and parameter fingerprints."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .sharding import Sharded, fsdp_requested, full_state, full_tensor, load_full, shard_like

CHECKPOINT_RE = re.compile(r"^step_(\d+)\.pt$")


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, rank, stream): the randomness of step n
    is the same whether or not the run was interrupted before it."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + rank * 131 + stream) % (2 ** 63))


def batch_indices(n_items: int, global_batch: int, seed: int, step: int, rank: int, world: int) -> list[int]:
    """This rank's share of step ``step``'s global batch (sampled with replacement)."""
    if global_batch % world:
        raise ValueError(f"the global batch {global_batch} must be a multiple of the process count {world}")
    idx = torch.randint(0, n_items, (global_batch,), generator=step_generator(seed, step, stream=1)).tolist()
    per = global_batch // world
    return idx[rank * per:(rank + 1) * per]


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be loaded, or that lacks what a run needs to resume."""


def save_checkpoint(folder: os.PathLike, step: int, state: dict, keep: int = 2) -> Path:
    """Write ``folder/step_<n>.pt`` atomically and keep the newest ``keep`` checkpoints.

    The state goes to a temporary file (a name :func:`list_checkpoints` never lists), is flushed
    and fsynced, then renamed over the final name and the folder fsynced: a writer killed at any
    point leaves every earlier checkpoint as it was, and at most a temporary file, removed by the
    next save."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".step_*.pt.tmp-*"):
        stale.unlink(missing_ok=True)
    final = folder / f"step_{step:07d}.pt"
    tmp = folder / f".step_{step:07d}.pt.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(dict(state, step=step), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def list_checkpoints(folder: os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


REQUIRED_KEYS = ("step", "model", "optimizer")


def load_checkpoint(path: os.PathLike) -> dict:
    """The checkpoint's state, or :class:`CheckpointError` naming the file when it is unreadable
    (truncated, corrupt) or lacks the keys a resume needs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in REQUIRED_KEYS if k not in state] if isinstance(state, dict) else list(REQUIRED_KEYS)
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: it has no {', '.join(missing)}")
    return state


def load_latest_checkpoint(folder: os.PathLike) -> Optional[tuple[Path, dict]]:
    """The newest checkpoint in ``folder`` that loads, with its state (None: there is none). A
    newer one that does not load is named in a warning and passed over; if none loads,
    :class:`CheckpointError` names them all. A state is returned whole or not at all."""
    found = list_checkpoints(folder)
    errors = []
    for path in reversed(found):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            warnings.warn(f"{exc}; falling back to the previous checkpoint", RuntimeWarning, stacklevel=2)
    if errors:
        raise CheckpointError(f"no checkpoint in {folder} can be loaded: " + "; ".join(errors))
    return None


def trainable_state(model: torch.nn.Module) -> dict:
    """The trainable parameters, whole (the frozen ones come from the base model on resume);
    collective when the model is sharded."""
    return full_state((n, p) for n, p in model.named_parameters() if p.requires_grad)


def load_trainable(model: torch.nn.Module, state: dict) -> None:
    """A checkpoint's whole trainable tensors into ``model`` (sharded or not), or
    :class:`CheckpointError` when the checkpoint lacks any: a checkpoint written with other model
    flags (rank, targets, ``--full``) must not resume half-loaded."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, _ in named if n not in state]
    if missing:
        raise CheckpointError(f"--resume: the checkpoint lacks {len(missing)} of the {len(named)} trainable tensors "
                              f"(e.g. {missing[0]}); was it written with other model flags?")
    load_full(named, state)


def fingerprint(model: torch.nn.Module, trainable_only: bool = True) -> str:
    """SHA-256 over the (trainable) parameters' bytes, in name order (of the whole parameters
    when sharded: collective, every process must call it)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if trainable_only and not p.requires_grad:
            continue
        h.update(name.encode())
        h.update(full_tensor(p).float().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Logs and images
# ----------------------------------------------------------------------------------------------
class CSVLog:
    """A CSV log with one row per step. On resume from step n, rows of steps >= n (written after
    the checkpoint the run resumes from) are dropped, so the log equals an uninterrupted run's."""

    def __init__(self, path: os.PathLike, fields: Sequence[str], resume_step: int = 0, enabled: bool = True):
        self.path, self.fields, self.enabled = Path(path), list(fields), enabled
        if not enabled:
            return
        rows = []
        if resume_step > 0 and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow({k: row.get(k, "") for k in self.fields})


def clip_or_skip(accelerator, params, clip: float, skip_above: float, sharded: bool = False) -> tuple[float, bool]:
    """After ``backward``: the gradient norm of ``params`` (before clipping), clipped to ``clip``
    when > 0, and whether to apply the step: not when the norm is non-finite (a NaN batch, an inf
    loss) or above ``skip_above`` (> 0). A skipped step must leave the weights, the optimizer state
    and the EMA as they are; the caller zeroes the gradients. ``sharded``: the parameters are
    partly FSDP-sharded (:class:`~.sharding.Sharded`); the norm is then the global one."""
    params = [p for p in params if p.grad is not None]
    if not params and not sharded:
        return 0.0, True
    max_norm = clip if clip > 0 else float("inf")
    if sharded:
        accelerator.unscale_gradients()  # fp16: the loss scale out first, as accelerate's own clip does
        norm = Sharded.clip_grad_norm(params, max_norm)
    else:
        norm = float(accelerator.clip_grad_norm_(params, max_norm))
    return norm, math.isfinite(norm) and (skip_above <= 0 or norm <= skip_above)


def backward_and_clip(accelerator, loss: torch.Tensor, params, clip: float, skip_above: float,
                      sharded: Optional[Sharded] = None) -> tuple[float, bool]:
    """accelerate's backward, then under FSDP the replicated gradients averaged over the processes,
    then :func:`clip_or_skip` (with the global norm when sharded)."""
    accelerator.backward(loss)
    if sharded is not None:
        sharded.sync_grads()
    return clip_or_skip(accelerator, params, clip, skip_above, sharded=sharded is not None)


def rebuilt_whole(model: torch.nn.Module, rebuild: Callable[[], torch.nn.Module], is_main: bool,
                  device: torch.device) -> Optional[torch.nn.Module]:
    """A sharded ``model`` whole, on the main process (None elsewhere): ``rebuild()`` (the model
    as built before training, unsharded) with ``model``'s trained weights gathered into it.
    Collective: every process must call it."""
    weights = trainable_state(model)
    if not is_main:
        return None
    whole = rebuild().to(device)
    load_trainable(whole, weights)
    return whole


def first_last(values: Sequence[float], fraction: float = 0.1) -> tuple[float, float]:
    """Means of the first and the last ``fraction`` of a curve (at least one value each);
    non-finite values (skipped steps) are left out."""
    values = [v for v in values if math.isfinite(v)] or [float("nan")]
    n = max(1, int(len(values) * fraction))
    return sum(values[:n]) / n, sum(values[-n:]) / n


def csv_column(path: os.PathLike, name: str) -> list[float]:
    """One numeric column of a CSV log (empty cells skipped; no file: empty list)."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return [float(r[name]) for r in csv.DictReader(f) if r.get(name) not in (None, "")]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> [B, H, W, 3] uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class EMA:
    """Exponential moving average of a set of parameters, kept in float32 (for sampling), with a
    constant decay. (diffusers' ``EMAModel`` ramps its decay as (1 + n) / (10 + n) from the start
    and keeps the shadow in the parameters' dtype; this one is the plain average the recipes
    state.)"""

    def __init__(self, named_params, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: 'decay' must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in named_params}

    @torch.no_grad()
    def update(self, named_params) -> None:
        for n, p in named_params:
            self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, named_params) -> None:
        for n, p in named_params:
            p.copy_(self.shadow[n].to(p.dtype))

    def state_dict(self) -> dict:
        """The decay and whole shadow tensors (gathered when sharded: collective)."""
        return {"decay": self.decay, "shadow": full_state(self.shadow.items())}

    def load_state_dict(self, state: dict, like: Optional[dict] = None) -> None:
        """``like``: ``{name: parameter}``; each shadow tensor is then laid out as its parameter
        (sharded under FSDP)."""
        self.decay = state["decay"]
        self.shadow = {n: (shard_like(t, like[n], torch.float32) if like is not None and n in like else t.float().clone())
                       for n, t in state["shadow"].items()}


def make_accelerator(mixed_precision: str = "no"):
    """``accelerate.Accelerator`` for the training scripts, plus (rank, world size, is main).
    ``cpu=True`` when there is no GPU: accelerate then treats torchrun's CPU processes as one
    gloo group instead of independent single-process runs."""
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    return acc, acc.process_index, acc.num_processes, acc.is_main_process


def peak_memory(device: torch.device) -> dict:
    """This process's peak resident memory so far (GiB) and, on CUDA, the peak allocated by torch."""
    import resource

    peak = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}
    if device.type == "cuda":
        peak["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    return peak


def write_rank_fingerprint(out: os.PathLike, rank: int, world: int, digest: str) -> None:
    """With several processes, each writes ``ranks/rank<r>.json`` with its weights' fingerprint
    (data-parallel replicas must end identical)."""
    if world > 1:
        folder = Path(out) / "ranks"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "fingerprint": digest}))


class TrainingRun:
    """The bookkeeping around a training loop, the same for both trainers.

    From the parsed arguments (``output_dir``, ``mixed_precision``, ``batch_size``, ``steps``,
    ``seed``, ``resume``, ``checkpoint_every``, ``keep_checkpoints``, ``no_progress`` and, if
    present, ``stop_at``) it holds the accelerator and this process's rank, reads the checkpoint
    to resume from, writes ``args.json`` and ``log.csv`` (cut back to the resumed step), saves
    atomic checkpoints when due, and writes each rank's weight fingerprint at the end."""

    def __init__(self, args, log_fields: Sequence[str]):
        self.args = args
        self.accelerator, self.rank, self.world, self.is_main = make_accelerator(args.mixed_precision)
        # A run started inside another process's run (the default DA-VAE, trained on first use by
        # the main process while the others wait): one process, no collectives, the process group
        # left to the outer run.
        self.local = bool(getattr(args, "in_process", False))
        if self.local:
            self.rank, self.world, self.is_main = 0, 1, True
        self.fsdp = not self.local and fsdp_requested(self.accelerator)  # sharded (.sharding), not DDP-wrapped
        if args.batch_size % self.world:
            raise ValueError(f"--batch-size {args.batch_size} must be a multiple of the process count {self.world}")
        self.out = Path(args.output_dir)
        self.checkpoints = self.out / "checkpoints"
        self.progress = not args.no_progress and self.is_main
        self.log_fields = list(log_fields)
        self.log: Optional[CSVLog] = None
        self.started = time.time()
        torch.manual_seed(args.seed)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def distributed(self) -> bool:
        """Whether accelerate wraps the model (DDP): several processes, neither FSDP nor local."""
        return self.world > 1 and not self.fsdp

    def main_process_first(self):
        return contextlib.nullcontext() if self.local else self.accelerator.main_process_first()

    def wait_for_everyone(self) -> None:
        if not self.local:
            self.accelerator.wait_for_everyone()

    def end_training(self) -> None:
        """accelerate's end (which destroys the process group) once every process has reached it,
        so that no process tears its gloo/NCCL connections down and exits while another is still
        writing the pipeline or sampling: not for a local run."""
        if not self.local:
            self.accelerator.wait_for_everyone()
            self.accelerator.end_training()

    def resume_state(self) -> Optional[dict]:
        """The newest loadable checkpoint's state with ``--resume`` (None without it). A newer
        checkpoint that does not load is passed over with a warning naming it."""
        if not self.args.resume:
            return None
        found = load_latest_checkpoint(self.checkpoints)
        if found is None:
            raise ValueError(f"--resume: no checkpoint in {self.checkpoints} (drop --resume to start from step 0)")
        path, state = found
        self.accelerator.print(f"resumed from {path} at step {int(state['step'])}")
        return state

    def begin(self, start: int, **record) -> None:
        """Opens the log at ``start`` and writes ``args.json`` (the arguments plus ``record``)."""
        self.log = CSVLog(self.out / "log.csv", self.log_fields, resume_step=start, enabled=self.is_main)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "args.json").write_text(json.dumps(vars(self.args) | record | {"processes": self.world},
                                                           indent=1))
        self.started = time.time()

    def steps(self, start: int, desc: str):
        """The loop's steps, ``start`` to ``--steps``, with a tqdm bar on the main process."""
        from tqdm.auto import tqdm

        return tqdm(range(start, self.args.steps), initial=start, total=self.args.steps, desc=desc,
                    disable=not self.progress)

    def elapsed(self) -> float:
        return time.time() - self.started

    def loop(self, trainer, start: int, desc: str) -> bool:
        """The fine-tuning loop both trainers of a transformer run: ``trainer.step(step)`` from
        ``start`` to ``--steps``, each row logged with its throughput, a checkpoint of
        ``trainer.checkpoint_state()`` when due. Returns False when ``--stop-at`` ended it early
        (accelerate's tracking already ended), True at the last step."""
        self.begin(start)
        for step in (bar := self.steps(start, desc)):
            row = trainer.step(step)
            row |= {"steps_per_s": (step + 1 - start) / max(self.elapsed(), 1e-9), "seconds": round(self.elapsed(), 3)}
            self.log.write(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", w=f"{row['detail_weight']:.3f}", it_s=f"{row['steps_per_s']:.2f}")
            if self.end_step(step + 1, trainer.checkpoint_state):
                self.end_training()
                return False
        return True

    def end_step(self, done: int, state: Callable[[], dict]) -> bool:
        """After ``done`` steps: a checkpoint of ``state()`` when one is due. Returns True when
        the loop must stop here (``--stop-at``: as if the process were killed after it)."""
        args = self.args
        stop = getattr(args, "stop_at", None) is not None and done >= args.stop_at
        due = done % args.checkpoint_every == 0 or done == args.steps or stop
        if due and (self.is_main or self.fsdp):  # a sharded state is gathered by every process
            whole = state()
            if self.is_main:
                save_checkpoint(self.checkpoints, done, whole, keep=args.keep_checkpoints)
        if stop:
            self.accelerator.print(f"--stop-at {args.stop_at}: stopping as if killed")
        return stop

    def finish(self, model: torch.nn.Module) -> dict:
        """Waits for every process; the summary every run reports (recipe, steps, steps skipped by
        the gradient check, processes, seconds, the trainable weights' fingerprint, also written per
        rank, and the peak memory of training: :func:`peak_memory`, before any final sampling)."""
        self.wait_for_everyone()
        summary = {"recipe": self.args.recipe, "steps": self.args.steps,
                   "skipped_steps": int(sum(csv_column(self.out / "log.csv", "skipped"))),
                   "processes": self.world, "seconds": round(self.elapsed(), 2), "fingerprint": fingerprint(model),
                   **peak_memory(self.device)}
        write_rank_fingerprint(self.out, self.rank, self.world, summary["fingerprint"])
        return summary

    def write_summary(self, summary: dict) -> None:
        if self.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
