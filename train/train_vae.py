"""Train a DA-VAE (paper Sec. 3) on top of a pretrained diffusers AutoencoderKL.

    python train/train_vae.py                                    # embedded tiny SD3.5 VAE, shipped photos
    python train/train_vae.py --base-vae PATH --data DIR --resolution 1024 --mixed-precision bf16
    accelerate launch train/train_vae.py ...                     # several GPUs / machines
    torchrun --nproc_per_node 2 train/train_vae.py ...           # two CPU processes (gloo)

The base encoder is frozen; the detail encoder trunk is frozen by default (the released SD3 recipe:
only its new down block trains, plus the up block and the decoder). Loss:
L1 x 2.0 + KL x 1e-7 + alignment x 1.0 (+ LPIPS x 1.0 with --lpips-weights, + PatchGAN hinge x 0.1
with --gan). Each step's batch, crops and noise depend only on (seed, step), so --resume continues
exactly where a killed run stopped.

Writes under --output-dir: log.csv, checkpoints/step_*.pt (atomic), loss_curves.png,
reconstructions.png (rows: input, base VAE at 1/2 resolution upsampled, DA-VAE), eval.json, and
davae/ (save_pretrained, with the detail latent statistics).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

DEFAULT_OUTPUT = "outputs/train_vae"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    a("--output-dir", default=DEFAULT_OUTPUT, help=f"where everything is written (default: {DEFAULT_OUTPUT})")
    a("--detail-channels", type=int, default=None, help="D (default: C, the base latent channels)")
    a("--order", choices=["base_first", "detail_first"], default="base_first", help="channel order (default: base_first)")
    a("--freeze-detail-trunk", action=argparse.BooleanOptionalAction, default=True,
      help="freeze the detail encoder's pretrained trunk (default: frozen, as the released SD3 recipe)")
    a("--init-from-base", action=argparse.BooleanOptionalAction, default=True,
      help="start the detail trunk and decoder from the pretrained weights (default: on)")
    a("--detail-dropout", type=float, default=0.0, help="per-sample dropout of the detail latent at the decoder input (default: 0)")
    a("--steps", type=int, default=600, help="optimizer steps (default: 600)")
    a("--batch-size", type=int, default=4, help="global batch size, split over processes (default: 4)")
    a("--lr", type=float, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    a("--lr-warmup", type=int, default=0, help="linear warm-up steps (default: 0)")
    a("--weight-decay", type=float, default=1e-4, help="AdamW weight decay, not on biases and norms (default: 1e-4)")
    a("--grad-clip", type=float, default=1.0, help="gradient-norm clip, 0 = off (default: 1.0)")
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
    a("--gradient-checkpointing", action="store_true", help="recompute activations in backward (default: off)")
    a("--fused", action="store_true", help="concatenation and alignment loss through the fused kernels (default: reference PyTorch)")
    a("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default: 100)")
    a("--keep-checkpoints", type=int, default=2, help="checkpoints kept (default: 2)")
    a("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir (default: off)")
    a("--seed", type=int, default=0, help="seed of batches, crops and noise (default: 0)")
    a("--eval-images", type=int, default=8, help="held-out images evaluated and shown (default: 8)")
    a("--no-eval", action="store_true", help="skip the final evaluation, grid and statistics (default: run them)")
    a("--quick-default", action="store_true", help="with no --base-vae, use the quick tiny pipeline (tests) (default: off)")
    a("--no-progress", action="store_true", help="no tqdm progress bar (default: shown)")
    return p.parse_args(argv)


def resolve_base_vae(args) -> str:
    if args.base_vae:
        return args.base_vae
    from davae_ext.tiny import build_tiny_sd35

    return str(build_tiny_sd35(quick=args.quick_default, progress=not args.no_progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def main(argv=None) -> dict:
    args = parse_args(argv)
    from tqdm.auto import tqdm

    from davae_ext import losses
    from davae_ext.data import ImageCaptionFolder, sample_photos
    from davae_ext.davae import DAVAE, load_base_vae
    from davae_ext.training import (CSVLog, batch_indices, fingerprint, latest_checkpoint, load_checkpoint,
                                    make_accelerator, save_checkpoint, step_generator, trainable_state,
                                    write_rank_fingerprint)

    out = Path(args.output_dir)
    accelerator, rank, world, main_proc = make_accelerator(args.mixed_precision)
    torch.manual_seed(args.seed)

    # ------------------------------------------------------------------ inputs, checked first
    if args.lpips_weights is not None and not os.path.exists(args.lpips_weights):
        raise FileNotFoundError(f"--lpips-weights {args.lpips_weights!r} does not exist (never downloaded)")
    with accelerator.main_process_first():  # a first-use tiny build runs once, in the main process
        base_path = resolve_base_vae(args)
    vae = load_base_vae(base_path)
    C = vae.config.latent_channels
    if args.base_channels is not None and args.base_channels != C:
        raise ValueError(f"--base-channels {args.base_channels} does not match the base VAE at {base_path!r}, "
                         f"which has {C} latent channels")
    model = DAVAE.from_base_vae(vae, detail_channels=args.detail_channels, order=args.order,
                                freeze_detail_trunk=args.freeze_detail_trunk, init_from_base=args.init_from_base,
                                fused=args.fused, detail_dropout=args.detail_dropout)
    f = model.spatial_factor
    if args.resolution % f:
        raise ValueError(f"--resolution {args.resolution} must be a multiple of the DA-VAE's spatial factor {f}")
    crop = min(args.train_crop or args.resolution, args.resolution)
    if crop % f or crop > args.resolution:
        raise ValueError(f"--train-crop {crop} must be a multiple of the DA-VAE's spatial factor {f} and at most --resolution")
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of the process count {world}")
    data = ImageCaptionFolder(args.data or sample_photos("train"), args.resolution, cache_in_memory=True)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    lpips = losses.LPIPS(args.lpips_weights).to(accelerator.device) if args.lpips_weights else None
    align_weight = losses.AlignWeight(args.align_weight, args.align_mode)

    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.99))
    disc = disc_opt = None
    if args.gan:
        disc = losses.PatchDiscriminator()
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=args.disc_lr, betas=(0.5, 0.9), weight_decay=0.0)

    # ------------------------------------------------------------------ resume
    start = 0
    ckpt_dir = out / "checkpoints"
    if args.resume:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            accelerator.print(f"--resume: no checkpoint in {ckpt_dir}; starting from step 0")
        else:
            state = load_checkpoint(path)
            missing = set(trainable_state(model)) - set(state["model"])
            if missing:
                raise ValueError(f"--resume: {path} lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[0]}); "
                                 "was it written with other model flags?")
            model.load_state_dict(state["model"], strict=False)
            opt.load_state_dict(state["optimizer"])
            if disc is not None and "disc" in state:
                disc.load_state_dict(state["disc"])
                disc_opt.load_state_dict(state["disc_optimizer"])
            start = int(state["step"])
            accelerator.print(f"resumed from {path} at step {start}")

    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.lr_warmup) if args.lr_warmup > 0 else 1.0, last_epoch=-1)
    for _ in range(start):
        schedule.step()
    if disc is not None:
        model, opt, disc, disc_opt = accelerator.prepare(model, opt, disc, disc_opt)
    else:
        model, opt = accelerator.prepare(model, opt)
    core = accelerator.unwrap_model(model)
    enc_last = core.detail_down.conv.weight
    dec_last = core.decoder.conv_out.weight

    fields = ["step", "loss", "l1", "kl", "align", "align_weight", "lpips", "g_loss", "d_loss", "lr", "seconds"]
    log = CSVLog(out / "log.csv", fields, resume_step=start, enabled=main_proc)
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(vars(args) | {"base_vae_resolved": base_path, "processes": world}, indent=1))

    model.train()
    t0 = time.time()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="DA-VAE", disable=args.no_progress or not main_proc)
    for step in bar:
        data.reseed((args.seed * 1_000_003 + step * 7919 + rank) % (2 ** 31))
        idx = batch_indices(len(data), args.batch_size, args.seed, step, rank, world)
        x = torch.stack([data[i]["pixel_values"] for i in idx]).to(accelerator.device)
        gen = step_generator(args.seed, step, rank)
        if crop < args.resolution:
            offsets = torch.randint(0, args.resolution - crop + 1, (len(idx), 2), generator=gen).tolist()
            x = torch.stack([img[:, t:t + crop, l:l + crop] for img, (t, l) in zip(x, offsets)])
        with accelerator.autocast():
            o = model(x, generator=gen)
            rec = o.sample.float()
            l1 = losses.l1(rec, x)
            kl = losses.kl_loss(o.posterior.detail.mean.float(), o.posterior.detail.logvar.float(), args.kl_form)
            rec_loss = args.l1_weight * l1
            lp = torch.zeros((), device=x.device)
            if lpips is not None:
                lp = lpips(rec, x).mean()
                rec_loss = rec_loss + args.lpips_weight * lp
            align = o.align_loss.float()
            w_align = align_weight(rec_loss, align, enc_last if enc_last.requires_grad else None)
            loss = rec_loss + args.kl_weight * kl + w_align * align
            g_loss = torch.zeros((), device=x.device)
            gan_on = disc is not None and step >= args.gan_start
            if gan_on:
                g_loss = losses.hinge_g_loss(disc(rec))
                d_w = args.gan_weight * losses.grad_norm_ratio(rec_loss, g_loss, dec_last, 1e4)
                loss = loss + d_w * g_loss
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if args.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        schedule.step()
        d_loss = torch.zeros(())
        if gan_on:
            with accelerator.autocast():
                d_loss = losses.hinge_d_loss(disc(x), disc(rec.detach()))
            disc_opt.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            disc_opt.step()

        row = {"step": step, "loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "align": align.item(),
               "align_weight": float(w_align), "lpips": lp.item(), "g_loss": g_loss.item(), "d_loss": d_loss.item(),
               "lr": schedule.get_last_lr()[0], "seconds": round(time.time() - t0, 3)}
        log.write(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", l1=f"{row['l1']:.4f}", align=f"{row['align']:.4f}")
        done = step + 1
        if (done % args.checkpoint_every == 0 or done == args.steps) and main_proc:
            state = {"model": trainable_state(core), "optimizer": opt.state_dict(), "args": vars(args)}
            if disc is not None:
                state["disc"] = accelerator.unwrap_model(disc).state_dict()
                state["disc_optimizer"] = disc_opt.state_dict()
            save_checkpoint(ckpt_dir, done, state, keep=args.keep_checkpoints)

    accelerator.wait_for_everyone()
    summary = {"steps": args.steps, "processes": world, "seconds": round(time.time() - t0, 2),
               "fingerprint": fingerprint(core)}
    write_rank_fingerprint(out, rank, world, summary["fingerprint"])
    if main_proc and not args.no_eval:
        summary.update(finish(core, args, out, base_path, lpips, data))
    if main_proc:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"DA-VAE training done: {out.resolve()} (model in {out / 'davae'})")
    accelerator.end_training()
    return summary


def finish(model, args, out: Path, base_path: str, lpips, data) -> dict:
    """Latent statistics, held-out evaluation, PNGs and the saved model."""
    from davae_ext.data import sample_photos
    from davae_ext.evaluation import evaluate_davae, format_table, load_images
    from davae_ext.training import csv_column, save_grid
    from davae_ext._plot import save_curves

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


if __name__ == "__main__":
    main()
