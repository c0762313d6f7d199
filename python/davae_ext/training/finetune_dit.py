"""Fine-tuning a class-conditional DiT on a DA-VAE latent (the paper's ImageNet system, Sec. 4 and
Table 1): the run ``train/finetune_dit.py`` starts (:func:`finetune_dit`; its arguments:
:func:`.cli.finetune_dit_parser`).

The pretrained ``DiTTransformer2DModel`` is widened with :func:`davae_ext.models.dit.expand_dit`
(``--init``, default zero: at step 0 the base-channel prediction is the pretrained model's, which
:func:`step0_check` measures) and trained in full, as the ImageNet recipe does. Objective:
rectified flow (``x_sigma = (1 - sigma) x0 + sigma eps``, target ``eps - x0``, timestep
``1000 sigma``, logit-normal sigma) with the detail channels' weight ramped by Eq. 12 and
normalised by Eq. 13, plus LightningDiT's cosine velocity term; class labels dropped to the null
class for CFG. The DiT's base channels are normalised as the pretrained model's latents were
(its ``latent_stats.json``), the detail channels with statistics of the training latents
themselves (the ImageNet code's calibration). Latents are computed once per (model, DA-VAE,
data, settings) and cached on disk.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import torch

from .. import ops, use_backend
from ..channels import split_channels
from ..models.davae import DAVAE
from ..models.dit import expand_dit
from .cache import atomic_dir, cache_root, is_complete
from .common import EMA, TrainingRun, batch_indices, csv_column, first_last, step_generator
from .finetune import TransformerTuner, cache_key, default_davae, step0_lines
from .flow import cosine_velocity_loss, detail_weight, flow_loss, sample_sigmas
from .plot import save_curves, save_grid
from .recipes import recipe_defaults

LOG_FIELDS = ["step", "loss", "flow", "cosine", "base_mse", "detail_mse", "detail_weight", "grad_norm", "skipped",
              "steps_per_s", "seconds"]
DETAIL_RATIO = 3  # D = 3 C for the default DA-VAE, as the paper's ImageNet DA-VAE (C = 32, D = 96)


def finetune_dit(args: argparse.Namespace) -> dict:
    """Runs the fine-tuning ``args`` describe (parsed and checked by :mod:`.cli`); returns the
    summary also written to ``summary.json``."""
    with use_backend("fused" if args.fused else "reference"):
        run = TrainingRun(args, LOG_FIELDS)
        native, davae, resolution = load_models(args, run)
        cache, reused = latent_cache(args, run, davae, resolution)
        tuner = _DiTTuner(args, run, native.transformer, davae, cache)
        state = run.resume_state()
        if state is None:
            tuner.check_step0(native.transformer)
        trainable = tuner.trainable_count()
        start = tuner.prepare(state)
        summary = {"model": args.model, "davae": args.davae, "resolution": resolution, "n_warm": tuner.n_warm,
                   "init": args.init, "classes": native.classes, "trainable_parameters": trainable,
                   "cache_reused": reused, "step0": tuner.step0, "fsdp": run.fsdp}
        if not run.loop(tuner, start, "fine-tune DiT"):
            return summary
        summary |= run.finish(tuner.core)
        model, ema = tuner.unsharded()
        if run.is_main:
            log = run.out / "log.csv"
            summary["losses"] = {k: first_last(csv_column(log, k)) for k in ("loss", "base_mse", "detail_mse", "cosine")}
            summary["eval_flow"] = evaluate_flow(model, cache, tuner.C, tuner.order, run.device, args.seed)
            tuner.plot_losses()
            if not args.no_sample:
                summary["pipeline"] = str(finish(model, ema, davae, native, args, run.out, resolution))
            print(summary_lines(summary, run.out))
        run.write_summary(summary)
        run.end_training()
    return summary


def summary_lines(summary: dict, out: Path) -> str:
    lines = [f"DiT fine-tuning done in {summary['seconds']:.0f} s: {out.resolve()}"] + step0_lines(summary)
    for name, (first, last) in summary["losses"].items():
        lines.append(f"  {name} {first:.4f} -> {last:.4f} (mean of the first and last 10% of steps)")
    e = summary["eval_flow"]
    lines.append(f"  at the end, every cached latent at sigma {e['sigmas']}: flow {e['flow']:.4f} (base MSE "
                 f"{e['base_mse']:.4f}, detail MSE {e['detail_mse']:.4f}), 1 - cosine {e['cosine']:.4f}")
    if "pipeline" in summary:
        lines.append(f"  pipeline: {summary['pipeline']}; samples.png (one row per class), loss_curves.png")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def load_native(model: str):
    """The pretrained class-conditional pipeline of ``model``: a folder with ``transformer``
    (``DiTTransformer2DModel``) and ``vae`` (``AutoencoderKL``) subfolders, such as the tiny DiT's
    or a diffusers ``DiTPipeline``'s; ``latent_stats.json`` and ``classes.json`` are read if
    present."""
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    from ..models.dit_pipeline import DAVAEDiTPipeline

    transformer = DiTTransformer2DModel.from_pretrained(model, subfolder="transformer")
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    pipe = DAVAEDiTPipeline(transformer=transformer, vae=vae)
    pipe.read_side_files(model)
    if not pipe.classes:
        pipe.classes = [str(i) for i in range(transformer.config.num_embeds_ada_norm)]
    return pipe


def load_models(args, run: TrainingRun):
    """The native pipeline, the DA-VAE (its base channels normalised as the pretrained model's
    latents were) and the training resolution; the default models are built on first use by the
    main process."""
    if args.model is None:
        from .tiny_dit import build_tiny_dit

        with run.accelerator.main_process_first():
            args.model = str(build_tiny_dit(quick=args.quick_default, progress=run.progress))
    native = load_native(args.model)
    if args.davae is None:
        C = native.transformer.config.in_channels
        with run.accelerator.main_process_first():
            args.davae = default_davae(args.model, args.quick_default, run.progress, args.mixed_precision,
                                       "imagenet", detail_channels=DETAIL_RATIO * C)
    davae = DAVAE.from_pretrained(args.davae).to(run.device).eval()
    davae.requires_grad_(False)
    match_base_normalisation(davae, native.latent_stats)
    resolution = args.resolution or native.transformer.config.sample_size * davae.spatial_factor
    return native, davae, resolution


def match_base_normalisation(davae: DAVAE, latent_stats: dict) -> None:
    """The DA-VAE's base channels normalised as the pretrained model's latents were, so the
    widened model sees them as the pretrained one saw its latents: standardised with the model's
    per-channel statistics when it has them (``latent_norm="all"``), else left as the base VAE's
    shift / scale gives them (``latent_norm="detail"``, whatever the DA-VAE was calibrated with)."""
    if latent_stats:
        davae.register_to_config(latent_norm="all")
        davae.set_latent_stats(davae.config.detail_mean, davae.config.detail_std, base_mean=latent_stats["mean"],
                               base_std=latent_stats["std"])
    else:
        davae.register_to_config(latent_norm="detail")


def latent_cache(args, run: TrainingRun, davae: DAVAE, resolution: int) -> tuple[dict, bool]:
    """The cached latents and labels of the class folder (built by the main process if missing),
    and whether they were reused."""
    from .data import class_photos

    with run.accelerator.main_process_first():  # the shipped photo classes are written once
        data = args.data or str(class_photos())
    extra = f"dit-v2:{args.detail_latent}:{args.detail_noise}:{davae.config.latent_norm}"
    folder = cache_root() / "finetune_dit_cache" / cache_key(args.model, args.davae, data, resolution,
                                                             args.crops_per_image, args.seed, extra)
    with run.accelerator.main_process_first():
        reused = is_complete(folder)
        if not reused:
            with atomic_dir(folder) as tmp:
                build_cache(davae, data, resolution, args, tmp, run.progress)
    run.accelerator.print(f"latent cache {'reused' if reused else 'built'}: {folder}")
    cache = torch.load(folder / "cache.pt", map_location="cpu")
    davae.set_latent_stats(cache["detail_mean"], cache["detail_std"])  # what the cached latents were normalised with
    return cache, reused


@torch.no_grad()
def build_cache(davae: DAVAE, data: str, resolution: int, args, folder: Path, progress: bool) -> None:
    """``--crops-per-image`` random crops / flips of every image: DA-VAE latents (base posterior
    mean; detail posterior ``--detail-latent`` plus ``--detail-noise``), normalised, base and
    detail stored apart, with their class labels."""
    from tqdm.auto import tqdm

    from .data import ClassImageFolder

    ds = ClassImageFolder(data, resolution, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    raw, labels = [], []
    for _ in tqdm(range(args.crops_per_image), desc="caching DA-VAE latents", disable=not progress):
        items = [ds[i] for i in range(len(ds))]
        for j in range(0, len(items), 16):
            x = torch.stack([it["pixel_values"] for it in items[j:j + 16]]).to(davae.device)
            raw.append(davae.diffusion_latents(x, args.detail_latent, args.detail_noise, generator=gen, normalize=False).cpu())
        labels += [it["class_label"] for it in items]
    # The detail channels are standardised with statistics of these training latents (the ImageNet
    # code's calibration; with a sampled or noised detail latent they differ from the DA-VAE's,
    # which were taken on posterior modes).
    raw = torch.cat(raw)
    _, d = davae.split_latents(raw.double())
    stats = {"detail_mean": d.mean(dim=(0, 2, 3)).tolist(), "detail_std": d.std(dim=(0, 2, 3)).tolist()}
    davae.set_latent_stats(stats["detail_mean"], stats["detail_std"])
    z = davae.normalize_latents(raw.to(davae.device)).cpu()
    b, d = davae.split_latents(z)
    torch.save({"base": b.clone(), "detail": d.clone(), "labels": torch.tensor(labels), "classes": ds.classes, **stats},
               folder / "cache.pt")


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
class _DiTTuner(TransformerTuner):
    """The widened DiT, its optimiser and EMA, the per-step batches and the step."""

    replicate = ("transformer_blocks.0.norm1.emb",)  # diffusers' DiT conditions its output head with it

    def __init__(self, args, run: TrainingRun, original, davae: DAVAE, cache: dict):
        self.args, self.run, self.cache, self.original = args, run, cache, original
        self.order, self.C, self.D = davae.config.order, davae.base_channels, davae.detail_channels
        self.channels = davae.base_channels + davae.detail_channels
        self.null = original.config.num_embeds_ada_norm
        self.step0: Optional[dict] = None
        torch.manual_seed(args.seed)  # the "random" init, whether or not the default models were just built here
        self.transformer = self.rebuild()
        self.n_warm = args.n_warm if args.n_warm is not None else min(20000, args.steps // 2)

    def batch(self, step: int):
        """Step ``step``'s latents, noise, noise levels and labels (``--label-dropout`` of them the
        null class)."""
        args, run, cache = self.args, self.run, self.cache
        idx = batch_indices(len(cache["base"]), args.batch_size, args.seed, step, run.rank, run.world)
        x0 = ops.latent_concat(cache["base"][idx], cache["detail"][idx], order=self.order)
        g = step_generator(args.seed, step, run.rank)
        labels = cache["labels"][idx].clone()
        labels[torch.rand(len(idx), generator=g) < args.label_dropout] = self.null
        sigmas = sample_sigmas(len(idx), args.shift, g)
        noise = torch.randn(x0.shape, generator=g)
        dev = run.device
        return x0.to(dev), noise.to(dev), sigmas.to(dev), labels.to(dev)

    def rebuild(self):
        """The pretrained DiT widened (a copy: ``original`` stays the native model), every weight
        trainable, label dropout moved here (drawn per step from the step's seed)."""
        from .tiny_dit import disable_label_dropout

        transformer = expand_dit(self.original, self.D, init=self.args.init, order=self.order, fused=self.args.fused)
        transformer.requires_grad_(True)
        disable_label_dropout(transformer)
        if self.args.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        return transformer

    def make_optimizer(self, params: list) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.args.lr, betas=(0.9, self.args.adam_beta2), weight_decay=0.0)

    def check_step0(self, original) -> None:
        self.step0 = step0_check(self.transformer.to(self.run.device), original.to(self.run.device),
                                 self.batch(0), self.C, self.order)
        self.run.accelerator.print(f"step 0: {self.step0}")

    def step(self, step: int) -> dict:
        args, acc = self.args, self.run.accelerator
        w = detail_weight(step, self.n_warm)
        x0, noise, sigmas, labels = self.batch(step)
        s = sigmas.view(-1, 1, 1, 1)
        with acc.autocast():
            out = self.transformer((1 - s) * x0 + s * noise, timestep=sigmas * 1000, class_labels=labels).sample
        pred = out[:, : self.channels].float()  # a learned-sigma head's variance half is not trained
        parts = flow_loss(pred, x0, noise, sigmas, self.C, self.order, w)
        cosine = cosine_velocity_loss(pred, noise - x0)
        loss = parts["loss"] + args.cosine_weight * cosine
        self.opt.zero_grad(set_to_none=True)
        norm, apply = self.backward(loss)
        if apply:
            self.opt.step()
            self.ema.update(self.trainable(self.core))
        self.opt.zero_grad(set_to_none=True)
        return {"step": step, "loss": loss.item(), "flow": parts["loss"].item(), "cosine": cosine.item(),
                "base_mse": parts["base_mse"].item(), "detail_mse": parts["detail_mse"].item(), "detail_weight": w,
                "grad_norm": norm, "skipped": int(not apply)}

    def plot_losses(self) -> None:
        log = self.run.out / "log.csv"
        save_curves(self.run.out / "loss_curves.png",
                    {"base channels (MSE)": csv_column(log, "base_mse"), "detail channels (MSE)": csv_column(log, "detail_mse"),
                     "1 - cosine (all channels)": csv_column(log, "cosine")},
                    title=f"DiT fine-tuning on the DA-VAE latent (init {self.args.init}, N_warm={self.n_warm})")


@torch.no_grad()
def step0_check(transformer, original, batch, base_channels: int, order: str) -> dict:
    """The warm start measured on one batch: the widened model's base-channel prediction against
    the pretrained model's (on the base channels alone), and its largest detail prediction."""
    x0, noise, sigmas, labels = batch
    s = sigmas.view(-1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    C_total = x0.shape[1]
    pred = transformer(xt, timestep=sigmas * 1000, class_labels=labels).sample[:, :C_total]
    pred_base, pred_detail = split_channels(pred, base_channels, order)
    ref = original(split_channels(xt, base_channels, order)[0], timestep=sigmas * 1000, class_labels=labels).sample
    return {"max_abs_diff_base_prediction": float((pred_base - ref[:, :base_channels]).abs().max()),
            "max_abs_detail_prediction": float(pred_detail.abs().max())}


EVAL_SIGMAS = (0.2, 0.4, 0.6, 0.8)


@torch.no_grad()
def evaluate_flow(transformer, cache: dict, base_channels: int, order: str, device, seed: int,
                  batch_size: int = 32) -> dict:
    """The flow objective at the end of training, comparable between runs: Eq. 13 at full detail
    weight, its base and detail MSE and the cosine term, averaged over every cached latent at the
    noise levels :data:`EVAL_SIGMAS` with fixed noise (seeded by ``seed``), class-conditional."""
    was_training = transformer.training
    transformer.eval()
    totals = {"flow": 0.0, "base_mse": 0.0, "detail_mse": 0.0, "cosine": 0.0}
    count = 0
    gen = torch.Generator().manual_seed(seed + 12345)
    channels = cache["base"].shape[1] + cache["detail"].shape[1]
    for sigma in EVAL_SIGMAS:
        for i in range(0, len(cache["base"]), batch_size):
            x0 = ops.latent_concat(cache["base"][i:i + batch_size], cache["detail"][i:i + batch_size], order=order)
            noise = torch.randn(x0.shape, generator=gen)
            x0, noise = x0.to(device), noise.to(device)
            sigmas = torch.full((len(x0),), sigma, device=device)
            out = transformer((1 - sigma) * x0 + sigma * noise, timestep=sigmas * 1000,
                              class_labels=cache["labels"][i:i + batch_size].to(device)).sample[:, :channels].float()
            parts = flow_loss(out, x0, noise, sigmas, base_channels, order, 1.0)
            n = len(x0)
            totals["flow"] += float(parts["loss"]) * n
            totals["base_mse"] += float(parts["base_mse"]) * n
            totals["detail_mse"] += float(parts["detail_mse"]) * n
            totals["cosine"] += float(cosine_velocity_loss(out, noise - x0)) * n
            count += n
    transformer.train(was_training)
    return {k: v / count for k, v in totals.items()} | {"sigmas": list(EVAL_SIGMAS)}


def sampling_defaults(args) -> dict:
    return recipe_defaults("sampling_dit", args.recipe) | {"steps": args.sample_steps, "guidance": args.guidance,
                                                           "recipe": args.recipe}


def finish(transformer, ema: EMA, davae: DAVAE, native, args, out: Path, resolution: int) -> Path:
    """EMA weights into the transformer, the pipeline saved, a sample grid per class drawn."""
    from ..models.dit_pipeline import DAVAEDiTPipeline

    transformer.eval()
    ema.copy_to([(n, p) for n, p in transformer.named_parameters() if n in ema.shadow])
    pipe = DAVAEDiTPipeline(transformer=transformer, vae=davae)
    pipe.classes = list(native.classes)
    pipe.sampling_defaults = sampling_defaults(args)
    pipe.save_pretrained(out / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    rows = []
    n = args.samples_per_class
    for label in range(len(pipe.classes)):
        gens = [torch.Generator().manual_seed(args.seed + k) for k in range(n)]
        rows.append(pipe([label] * n, height=resolution, width=resolution, generator=gens, output_type="pt").images * 2 - 1)
    tokens = (resolution // davae.spatial_factor // transformer.config.patch_size) ** 2
    save_grid(out / "samples.png", rows, [f"{name}\n{resolution}x{resolution}\n{tokens} tokens" for name in pipe.classes],
              title=f"one row per class: {args.sample_steps} steps, CFG {args.guidance}, EMA weights")
    return out / "pipeline"
