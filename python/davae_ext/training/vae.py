"""Training a DA-VAE (paper Sec. 3) on a pretrained diffusers ``AutoencoderKL``: the command line
of ``train/train_vae.py`` (:func:`parser`) and the run it starts (:func:`train_davae`).

The base encoder is frozen; the detail encoder trunk is frozen by default (the released SD3
recipe: only its new down block trains, plus the up block and the decoder). Loss: L1 x 2.0 +
KL x 1e-7 + alignment x 1.0 (+ LPIPS x 1.0 with ``--lpips-weights``, + PatchGAN hinge x 0.1 with
``--gan``). Each step's batch, crops and noise depend only on (seed, step, rank), so ``--resume``
continues exactly where a killed run stopped.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional

import torch

from .. import use_backend
from ..models import losses
from ..models.davae import DAVAE, load_base_vae
from .common import add_run_arguments, TrainingRun, batch_indices, csv_column, save_grid, step_generator, trainable_state
from .data import ImageCaptionFolder, sample_photos
from .plot import save_curves

DEFAULT_OUTPUT = "outputs/train_vae"
LOG_FIELDS = ["step", "loss", "l1", "kl", "align", "align_weight", "lpips", "g_loss", "d_loss", "lr", "seconds"]


def parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """The arguments of ``train/train_vae.py``, each with its default in its help."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, DEFAULT_OUTPUT, steps=600, batch_size=4)
    a = p.add_argument
    a("--base-vae", default=None, help="diffusers AutoencoderKL folder, or a pipeline folder with a 'vae' subfolder "
                                       "(default: the embedded tiny SD3.5 pipeline's VAE, built on first use)")
    a("--base-channels", type=int, default=None, help="expected latent channels of the base VAE; checked (default: not checked)")
    a("--data", default=None, help="training image folder (default: the shipped photos, training split)")
    a("--eval-data", default=None, help="held-out image folder (default: the shipped photos, held-out split)")
    a("--resolution", type=int, default=256, help="training / evaluation image size (default: 256)")
    a("--train-crop", type=int, default=128,
      help="train on random crops of this size of the --resolution images (the model is convolutional; "
           "at most --resolution) (default: 128)")
    a("--detail-channels", type=int, default=None, help="D (default: C, the base latent channels)")
    a("--order", choices=["base_first", "detail_first"], default="base_first", help="channel order (default: base_first)")
    a("--freeze-detail-trunk", action=argparse.BooleanOptionalAction, default=True,
      help="freeze the detail encoder's pretrained trunk (default: frozen, as the released SD3 recipe)")
    a("--init-from-base", action=argparse.BooleanOptionalAction, default=True,
      help="start the detail trunk and decoder from the pretrained weights (default: on)")
    a("--detail-dropout", type=float, default=0.0, help="per-sample dropout of the detail latent at the decoder input (default: 0)")
    a("--lr", type=float, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    a("--lr-warmup", type=int, default=0, help="linear warm-up steps (default: 0)")
    a("--weight-decay", type=float, default=1e-4, help="AdamW weight decay, not on biases and norms (default: 1e-4)")
    a("--l1-weight", type=float, default=2.0, help="L1 weight (default: 2.0)")
    a("--kl-weight", type=float, default=1e-7, help="KL weight (default: 1e-7)")
    a("--kl-form", choices=["sum", "mean"], default="sum",
      help="KL normalisation: 'sum' = 0.5*sum over C,H,W, batch mean (SD3 recipe); 'mean' = element mean, no 1/2 (ImageNet) (default: sum)")
    a("--align-weight", type=float, default=1.0, help="alignment loss weight; 0 = the ablation without it (default: 1.0)")
    a("--align-mode", choices=["constant", "adaptive"], default="constant",
      help="constant weight (SD3 recipe) or weight x gradient-norm ratio (ImageNet recipe) (default: constant)")
    a("--lpips-weights", default=None, help="local LPIPS-VGG16 weights (file or folder); enables the perceptual loss (default: off)")
    a("--lpips-weight", type=float, default=1.0, help="perceptual loss weight when enabled (default: 1.0)")
    a("--gan", action="store_true", help="add a PatchGAN hinge loss (default: off, as the released SD3 recipe)")
    a("--gan-weight", type=float, default=0.1, help="adversarial weight, times the adaptive ratio (default: 0.1)")
    a("--gan-start", type=int, default=5001, help="step from which the GAN terms are on (default: 5001)")
    a("--disc-lr", type=float, default=1e-4, help="discriminator learning rate (default: 1e-4)")
    a("--mixed-precision", choices=["no", "bf16", "fp16"], default="no", help="autocast precision (default: no)")
    a("--fused", action="store_true", help="concatenation and alignment loss through the fused kernels (default: reference PyTorch)")
    a("--eval-images", type=int, default=8, help="held-out images evaluated and shown (default: 8)")
    a("--no-eval", action="store_true", help="skip the final evaluation, grid and statistics (default: run them)")
    return p


def train_davae(args: argparse.Namespace) -> dict:
    """Trains, evaluates and saves a DA-VAE as ``args`` say; returns the summary also written to
    ``summary.json``."""
    with use_backend("fused" if args.fused else "reference"):
        run = TrainingRun(args, LOG_FIELDS)
        setup = _setup(args, run)
        start = setup.resume(run.resume_state())
        setup.prepare(run)
        run.begin(start, base_vae_resolved=setup.base_path)
        for step in (bar := run.steps(start, "DA-VAE")):
            row = setup.step(step)
            run.log.write(row | {"seconds": round(run.elapsed(), 3)})
            bar.set_postfix(loss=f"{row['loss']:.4f}", l1=f"{row['l1']:.4f}", align=f"{row['align']:.4f}")
            run.end_step(step + 1, setup.checkpoint_state)
        summary = run.finish(setup.core)
        if run.is_main and not args.no_eval:
            summary.update(finish(setup.core, args, run.out, setup.base_path, setup.lpips, setup.data))
        run.write_summary(summary)
        if run.is_main:
            print(f"DA-VAE training done: {run.out.resolve()} (model in {run.out / 'davae'})")
        run.accelerator.end_training()
    return summary


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
        self.opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.99))
        self.disc = self.disc_opt = None
        if args.gan:
            self.disc = losses.PatchDiscriminator()
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=args.disc_lr, betas=(0.5, 0.9), weight_decay=0.0)
        warmup = args.lr_warmup
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)

    def resume(self, state: Optional[dict]) -> int:
        """Loads a checkpoint's state; returns the step to start from."""
        if state is None:
            return 0
        missing = set(trainable_state(self.model)) - set(state["model"])
        if missing:
            raise ValueError(f"--resume: the checkpoint lacks {len(missing)} trainable tensors (e.g. "
                             f"{sorted(missing)[0]}); was it written with other model flags?")
        self.model.load_state_dict(state["model"], strict=False)
        self.opt.load_state_dict(state["optimizer"])
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])
        start = int(state["step"])
        for _ in range(start):
            self.schedule.step()
        return start

    def prepare(self, run: TrainingRun) -> None:
        acc = run.accelerator
        if self.disc is not None:
            self.model, self.opt, self.disc, self.disc_opt = acc.prepare(self.model, self.opt, self.disc, self.disc_opt)
        else:
            self.model, self.opt = acc.prepare(self.model, self.opt)
        self.core = acc.unwrap_model(self.model)
        self.enc_last = self.core.detail_down.conv.weight
        self.dec_last = self.core.decoder.conv_out.weight
        self.model.train()

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
        zero = torch.zeros((), device=x.device)
        with acc.autocast():
            o = self.model(x, generator=gen)
            rec = o.sample.float()
            l1 = losses.l1(rec, x)
            kl = losses.kl_loss(o.posterior.detail.mean.float(), o.posterior.detail.logvar.float(), args.kl_form)
            rec_loss = args.l1_weight * l1
            lp = zero
            if self.lpips is not None:
                lp = self.lpips(rec, x).mean()
                rec_loss = rec_loss + args.lpips_weight * lp
            align = o.align_loss.float()
            w_align = self.align_weight(rec_loss, align, self.enc_last if self.enc_last.requires_grad else None)
            loss = rec_loss + args.kl_weight * kl + w_align * align
            gan_on = self.disc is not None and step >= args.gan_start
            g_loss = losses.hinge_g_loss(self.disc(rec)) if gan_on else zero
            if gan_on:
                loss = loss + args.gan_weight * losses.grad_norm_ratio(rec_loss, g_loss, self.dec_last, 1e4) * g_loss
        self.opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if args.grad_clip > 0:
            acc.clip_grad_norm_(self.model.parameters(), args.grad_clip)
        self.opt.step()
        self.schedule.step()
        d_loss = torch.zeros(())
        if gan_on:
            with acc.autocast():
                d_loss = losses.hinge_d_loss(self.disc(x), self.disc(rec.detach()))
            self.disc_opt.zero_grad(set_to_none=True)
            acc.backward(d_loss)
            self.disc_opt.step()
        return {"step": step, "loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "align": align.item(),
                "align_weight": float(w_align), "lpips": lp.item(), "g_loss": g_loss.item(), "d_loss": d_loss.item(),
                "lr": self.schedule.get_last_lr()[0]}

    def checkpoint_state(self) -> dict:
        state = {"model": trainable_state(self.core), "optimizer": self.opt.state_dict(), "args": vars(self.args)}
        if self.disc is not None:
            state["disc"] = self.run.accelerator.unwrap_model(self.disc).state_dict()
            state["disc_optimizer"] = self.disc_opt.state_dict()
        return state


def _setup(args, run: TrainingRun) -> _Setup:
    """Checks every input before any training (a bad flag fails in seconds), then builds the run."""
    if args.lpips_weights is not None and not os.path.exists(args.lpips_weights):
        raise FileNotFoundError(f"--lpips-weights {args.lpips_weights!r} does not exist (never downloaded)")
    with run.accelerator.main_process_first():  # a first-use tiny build runs once, in the main process
        base_path = args.base_vae or str(_tiny(args.quick_default, run.progress))
    vae = load_base_vae(base_path)
    C = vae.config.latent_channels
    if args.base_channels is not None and args.base_channels != C:
        raise ValueError(f"--base-channels {args.base_channels} does not match the base VAE at {base_path!r}, "
                         f"which has {C} latent channels")
    model = DAVAE.from_base_vae(vae, detail_channels=args.detail_channels, order=args.order,
                                freeze_detail_trunk=args.freeze_detail_trunk, init_from_base=args.init_from_base,
                                detail_dropout=args.detail_dropout)
    f = model.spatial_factor
    if args.resolution % f:
        raise ValueError(f"--resolution {args.resolution} must be a multiple of the DA-VAE's spatial factor {f}")
    crop = min(args.train_crop or args.resolution, args.resolution)
    if crop % f:
        raise ValueError(f"--train-crop {crop} must be a multiple of the DA-VAE's spatial factor {f} and at most --resolution")
    return _Setup(args, run, base_path, model, crop)


def _tiny(quick: bool, progress: bool) -> Path:
    from .tiny import build_tiny_sd35

    return build_tiny_sd35(quick=quick, progress=progress)


def finish(model: DAVAE, args, out: Path, base_path: str, lpips, data) -> dict:
    """Latent statistics, held-out evaluation, PNGs and the saved model."""
    from .evaluation import evaluate_davae, format_table, load_images

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
    save_grid(out / "reconstructions.png", [images, recs["base_half_upsampled"], recs["davae"]])
    log = out / "log.csv"
    curves = {"total": csv_column(log, "loss"), "L1": csv_column(log, "l1"), "alignment": csv_column(log, "align")}
    save_curves(out / "loss_curves.png", curves, title=f"DA-VAE on {Path(base_path).name}: "
                f"held-out PSNR {result['davae']['psnr_db']:.2f} dB vs {result['base_half_upsampled']['psnr_db']:.2f} dB")
    model.save_pretrained(out / "davae")
    return {"eval": result}
