"""Training a DA-VAE (paper Sec. 3) on a pretrained diffusers ``AutoencoderKL``: the run
``train/train_vae.py`` starts (:func:`train_davae`; its arguments: :func:`.cli.train_vae_parser`).

The base encoder is frozen; the detail encoder trunk is frozen by default (the released SD3
recipe: only its new down block trains, plus the up block and the decoder). The loss is L1 + KL +
alignment (+ LPIPS with ``--lpips-weights``, + PatchGAN hinge with ``--gan``), against the image or
the base VAE's reconstruction of it, with the weights of ``--recipe`` (``docs/recipes.md``).
Each step's batch, crops and noise depend only on (seed, step, rank), so ``--resume``
continues exactly where a killed run stopped.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Optional

import torch

from .. import use_backend
from ..models import losses
from ..models.davae import DAVAE, load_base_vae
from .cli import train_crop
from .common import (TrainingRun, backward_and_clip, batch_indices, clip_or_skip, csv_column, first_last,
                     load_trainable, rebuilt_whole, step_generator, trainable_state)
from .data import ImageCaptionFolder, sample_photos
from .plot import save_curves
from .sharding import Sharded, average_grads, full_optimizer_state, load_optimizer_state

LOG_FIELDS = ["step", "loss", "l1", "kl", "align", "align_weight", "lpips", "g_loss", "d_loss", "lr", "grad_norm",
              "skipped", "seconds"]


def train_davae(args: argparse.Namespace) -> dict:
    """Trains, evaluates and saves a DA-VAE as ``args`` say (parsed and checked by :mod:`.cli`);
    returns the summary also written to ``summary.json``."""
    with use_backend("fused" if args.fused else "reference"):
        run = TrainingRun(args, LOG_FIELDS)
        setup = _setup(args, run)
        start = setup.prepare(run.resume_state())
        run.begin(start, base_vae_resolved=setup.base_path)
        for step in (bar := run.steps(start, "DA-VAE")):
            row = setup.step(step)
            run.log.write(row | {"seconds": round(run.elapsed(), 3)})
            bar.set_postfix(loss=f"{row['loss']:.4f}", l1=f"{row['l1']:.4f}", align=f"{row['align']:.4f}")
            run.end_step(step + 1, setup.checkpoint_state)
        summary = run.finish(setup.core) | {"fsdp": run.fsdp}
        model = setup.unsharded() if not args.no_eval else None
        if run.is_main and not args.no_eval:
            summary.update(finish(model, args, run.out, setup.base_path, setup.lpips, setup.data))
        run.write_summary(summary)
        if run.is_main:
            print(summary_lines(summary, run.out))
        run.end_training()
    return summary


def summary_lines(summary: dict, out: Path) -> str:
    """What a person wants to read at the end of a run: where the outputs are, the loss from first
    to last steps and the held-out comparison."""
    first, last = first_last(csv_column(out / "log.csv", "loss"))
    lines = [f"DA-VAE training done in {summary['seconds']:.0f} s: {out.resolve()} (model in davae/)",
             f"  loss {first:.4f} -> {last:.4f} (mean of the first and last 10% of steps)"]
    if "eval" in summary:
        e = summary["eval"]
        d, b, f = (e[k]["psnr_db"] for k in ("davae", "base_half_upsampled", "base_full"))
        lines.append(f"  held-out PSNR: DA-VAE {d:.2f} dB vs base VAE at 1/2 res. upsampled {b:.2f} dB "
                     f"({d - b:+.2f} dB, same tokens); base VAE at full res. {f:.2f} dB (4x the tokens)")
        lines.append(f"  Proj(z_d) vs z: cosine {e['alignment']['align_cosine']:.3f}; "
                     "see reconstructions.png and loss_curves.png")
    return "\n".join(lines)


def lr_lambda(schedule: str, warmup: int, steps: int):
    """The learning-rate factor at a step: linear warm-up over ``warmup`` steps, then constant or
    a cosine decay reaching 0 at ``steps``."""
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            span = max(steps - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))
        return 1.0
    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on the weights, none on biases and norms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _Setup:
    """The model, data, losses and optimisers of one run, and its training step."""

    def __init__(self, args, run: TrainingRun, base_path: str, model: DAVAE, crop: int):
        self.args, self.run, self.base_path, self.model, self.crop = args, run, base_path, model, crop
        self.data = ImageCaptionFolder(args.data or sample_photos("train"), args.resolution, cache_in_memory=True)
        if args.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        self.lpips = losses.LPIPS(args.lpips_weights).to(run.device) if args.lpips_weights else None
        self.align_weight = losses.AlignWeight(args.align_weight, args.align_mode)
        self.disc = losses.PatchDiscriminator() if args.gan else None
        self.sharded: Optional[Sharded] = None

    def prepare(self, state: Optional[dict]) -> int:
        """Shards the model (FSDP; the discriminator stays replicated) or hands model and
        discriminator to accelerate (DDP, one process), builds the optimisers over the weights as
        they then are, loads ``state`` (a checkpoint's); returns the step to start from."""
        args, acc = self.args, self.run.accelerator
        if self.run.fsdp:
            self.sharded = Sharded(self.model, self.run.device, methods=("base_reconstruction",))
        self.opt = torch.optim.AdamW(param_groups(self.model, args.weight_decay), lr=args.lr, betas=(0.9, 0.99))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(args.lr_schedule, args.lr_warmup, args.steps))
        self.disc_opt = None if self.disc is None else torch.optim.AdamW(
            self.disc.parameters(), lr=args.disc_lr, betas=(0.5, 0.9), weight_decay=0.0)
        if self.run.distributed and self.disc is not None:
            self.model, self.opt, self.disc, self.disc_opt = acc.prepare(self.model, self.opt, self.disc, self.disc_opt)
        elif self.run.distributed:
            self.model, self.opt = acc.prepare(self.model, self.opt)
        else:  # one process, or FSDP (sharded above): the optimisers through accelerate for fp16's loss scaling
            self.model.to(self.run.device)
            self.opt = acc.prepare(self.opt)
            if self.disc is not None:
                self.disc.to(self.run.device)
                self.disc_opt = acc.prepare(self.disc_opt)
        self.core = acc.unwrap_model(self.model)
        self.enc_last = self.core.detail_down.conv.weight
        self.dec_last = self.core.decoder.conv_out.weight
        self.model.train()
        return 0 if state is None else self.resume(state)

    def resume(self, state: dict) -> int:
        """Loads a checkpoint's state; returns the step to start from."""
        load_trainable(self.core, state["model"])
        load_optimizer_state(self.opt, state["optimizer"])
        if self.disc is not None and "disc" in state:
            acc = self.run.accelerator
            acc.unwrap_model(self.disc).load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])
        start = int(state["step"])
        for _ in range(start):
            self.schedule.step()
        return start

    def unsharded(self) -> Optional[DAVAE]:
        """The trained model whole on the main process (None elsewhere): itself without FSDP; under
        FSDP a fresh one built as :func:`_setup` builds it, with the gathered trained weights
        (every process must call this then)."""
        if self.sharded is None:
            return self.core
        return rebuilt_whole(self.core, lambda: build_model(self.args, self.base_path), self.run.is_main, self.run.device)

    def batch(self, step: int):
        args, run = self.args, self.run
        self.data.reseed((args.seed * 1_000_003 + step * 7919 + run.rank) % (2 ** 31))
        idx = batch_indices(len(self.data), args.batch_size, args.seed, step, run.rank, run.world)
        x = torch.stack([self.data[i]["pixel_values"] for i in idx]).to(run.device)
        gen = step_generator(args.seed, step, run.rank)
        if self.crop < args.resolution:
            offsets = torch.randint(0, args.resolution - self.crop + 1, (len(idx), 2), generator=gen).tolist()
            x = torch.stack([img[:, t:t + self.crop, l:l + self.crop] for img, (t, l) in zip(x, offsets)])
        return x, gen

    def step(self, step: int) -> dict:
        """One optimiser step (and one discriminator step once the GAN is on); the log row."""
        args, acc = self.args, self.run.accelerator
        x, gen = self.batch(step)
        target = self.core.base_reconstruction(x).float() if args.recon_target == "base_reconstruction" else x
        zero = torch.zeros((), device=x.device)
        with acc.autocast():
            o = self.model(x, generator=gen)
            rec = o.sample.float()
            if args.clamp_output:
                rec = rec.clamp(-1.0, 1.0)
            l1 = losses.l1(rec, target) * (0.5 if args.image_range == "unit" else 1.0)
            kl = losses.kl_loss(o.posterior.detail.mean.float(), o.posterior.detail.logvar.float(), args.kl_form)
            rec_loss = args.l1_weight * l1
            lp = zero
            if self.lpips is not None:
                lp = self.lpips(rec, target).mean()
                rec_loss = rec_loss + args.lpips_weight * lp
            align = o.align_loss.float()
            w_align = self.align_weight(rec_loss, align, self.enc_last if self.enc_last.requires_grad else None)
            loss = rec_loss + args.kl_weight * kl + w_align * align
            gan_on = self.disc is not None and step >= args.gan_start
            g_loss = losses.hinge_g_loss(self.disc(rec)) if gan_on else zero
            if gan_on:
                loss = loss + args.gan_weight * losses.grad_norm_ratio(rec_loss, g_loss, self.dec_last, 1e4) * g_loss
        self.opt.zero_grad(set_to_none=True)
        norm, apply = backward_and_clip(acc, loss, self.model.parameters(), args.grad_clip, args.skip_grad_norm,
                                        self.sharded)
        if apply:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.schedule.step()
        d_loss = torch.zeros(())
        if gan_on and apply:
            with acc.autocast():
                d_loss = losses.hinge_d_loss(self.disc(x), self.disc(rec.detach()))
            self.disc_opt.zero_grad(set_to_none=True)
            acc.backward(d_loss)
            if self.sharded is not None:  # the discriminator is replicated, not DDP-wrapped
                average_grads(self.disc.parameters())
            if clip_or_skip(acc, self.disc.parameters(), 0.0, 0.0)[1]:
                self.disc_opt.step()
            self.disc_opt.zero_grad(set_to_none=True)
        return {"step": step, "loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "align": align.item(),
                "align_weight": float(w_align), "lpips": lp.item(), "g_loss": g_loss.item(), "d_loss": d_loss.item(),
                "lr": self.schedule.get_last_lr()[0], "grad_norm": norm, "skipped": int(not apply)}

    def checkpoint_state(self) -> dict:
        """Whole tensors whether sharded or not (collective under FSDP)."""
        state = {"model": trainable_state(self.core), "optimizer": full_optimizer_state(self.opt), "args": vars(self.args)}
        if self.disc is not None:
            state["disc"] = self.run.accelerator.unwrap_model(self.disc).state_dict()
            state["disc_optimizer"] = self.disc_opt.state_dict()
        return state


def _setup(args, run: TrainingRun) -> _Setup:
    """The model and the run, from arguments :func:`.cli.check_train_vae` has checked."""
    with run.main_process_first():  # a first-use tiny build runs once, in the main process
        base_path = args.base_vae or str(_tiny(args.quick_default, run.progress))
    torch.manual_seed(args.seed)  # the new blocks' init, whether or not the tiny model was just built here
    return _Setup(args, run, base_path, build_model(args, base_path), train_crop(args))


def build_model(args, base_path: str) -> DAVAE:
    """The DA-VAE ``args`` describe, built on the VAE at ``base_path``."""
    return DAVAE.from_base_vae(load_base_vae(base_path), detail_channels=args.detail_channels, order=args.order,
                               freeze_detail_trunk=args.freeze_detail_trunk, init_from_base=args.init_from_base,
                               detail_dropout=args.detail_dropout, init_up_block=args.init_up_block,
                               latent_norm=args.latent_norm)


def _tiny(quick: bool, progress: bool) -> Path:
    from .tiny import build_tiny_sd35

    return build_tiny_sd35(quick=quick, progress=progress)


def finish(model: DAVAE, args, out: Path, base_path: str, lpips, data) -> dict:
    """Latent statistics, held-out evaluation, PNGs and the saved model."""
    from .evaluation import evaluate_davae, format_table, load_images, save_reconstruction_grid

    model.eval()
    stats_batches = (torch.stack([data[i]["pixel_values"] for i in range(j, min(j + 4, len(data)))])
                     for j in range(0, len(data), 4))
    data.reseed(args.seed)
    model.calibrate_latent_stats(stats_batches)
    images = load_images(args.eval_data or sample_photos("eval"), args.resolution, limit=args.eval_images)
    result = evaluate_davae(model, images, lpips=lpips)
    recs = result.pop("images")
    print(format_table(result))
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    save_reconstruction_grid(out / "reconstructions.png", images, result, recs)
    log = out / "log.csv"
    curves = {"total": csv_column(log, "loss"), "L1": csv_column(log, "l1"), "alignment": csv_column(log, "align")}
    save_curves(out / "loss_curves.png", curves, title=f"DA-VAE on {Path(base_path).name}: "
                f"held-out PSNR {result['davae']['psnr_db']:.2f} dB vs {result['base_half_upsampled']['psnr_db']:.2f} dB")
    model.register_to_config(training_recipe=args.recipe)
    model.save_pretrained(out / "davae")
    return {"eval": result}
