"""Fine-tuning a text-to-image transformer on a DA-VAE latent (paper Sec. 4): the runs
``train/finetune_sd35.py`` and ``train/finetune_flux.py`` start (:func:`finetune`; their arguments:
:func:`.cli.finetune_parser`). What differs between model families (loading, text encoding, the
forward call, the pipeline written at the end) is a :class:`SD3Tuner` subclass's: this module's
for SD3 / SD3.5, :mod:`.finetune_flux`'s for FLUX.

The transformer is widened with :func:`davae_ext.models.sd3.expand_transformer` (``init="zero"``):
at step 0 it is the pretrained model on the base channels and predicts 0 for the detail channels,
which :func:`step0_check` measures on the first batch. The patch embedder and output head train in
full, the rest through LoRA (or fully with ``--full``). DA-VAE latents and text embeddings are
computed once per (model, DA-VAE, data) and cached on disk (:func:`latent_cache`).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Optional

import torch

from .. import ops, use_backend
from ..channels import split_channels
from ..models.davae import DAVAE
from ..models.sd3 import expand_transformer
from .cache import atomic_dir, cache_root, is_complete
from .common import (EMA, TrainingRun, backward_and_clip, batch_indices, csv_column, first_last, load_trainable,
                     rebuilt_whole, step_generator, trainable_state)
from .data import sample_photos
from .flow import detail_weight, flow_loss, sample_sigmas
from .lora import FULL_MODULES, add_lora, merge_lora
from .plot import save_curves, save_grid
from .recipes import DEFAULT_RECIPE, recipe_defaults
from .sampling import tokens_per_image
from .sharding import Sharded, full_optimizer_state, load_optimizer_state

DEFAULT_DAVAE_VERSION = "default-davae-v2"
LOG_FIELDS = ["step", "loss", "base_mse", "detail_mse", "detail_weight", "grad_norm", "skipped", "steps_per_s", "seconds"]


def finetune(args: argparse.Namespace, family: Optional[type] = None) -> dict:
    """Runs the fine-tuning ``args`` describe (parsed and checked by :mod:`.cli`) with the
    ``family``'s tuner (default :class:`SD3Tuner`); returns the summary also written to
    ``summary.json``."""
    family = family or SD3Tuner
    with use_backend("fused" if args.fused else "reference"):
        run = TrainingRun(args, LOG_FIELDS)
        original, davae, resolution = load_models(args, run, family)
        data = training_images(args, run, resolution, family)
        cache, reused = latent_cache(args, run, davae, data, resolution, family)
        tuner = family(args, run, original, davae, cache)
        del davae  # the latents are cached; finish() reloads the DA-VAE for the pipeline
        state = run.resume_state()
        if state is None:
            tuner.check_step0(original)
        del original
        tuner.cast_weights()
        trainable = tuner.trainable_count()
        start = tuner.prepare(state)
        summary = {"model": args.model, "davae": args.davae, "resolution": resolution, "n_warm": tuner.n_warm,
                   "trainable_parameters": trainable, "cache_reused": reused, "step0": tuner.step0,
                   "fsdp": run.fsdp}
        if not run.loop(tuner, start, "fine-tune"):
            return summary
        summary |= run.finish(tuner.core)
        model, ema = tuner.unsharded() if not args.no_sample else (None, None)
        if run.is_main:
            tuner.plot_losses()
            if not args.no_sample:
                summary["pipeline"] = str(finish(model, ema, args, run.out, resolution, family))
            print(summary_lines(summary, run.out))
        run.write_summary(summary)
        run.end_training()
    return summary


def summary_lines(summary: dict, out: Path) -> str:
    """Where the outputs are, the step-0 identity and the two losses from first to last steps."""
    lines = [f"fine-tuning done in {summary['seconds']:.0f} s: {out.resolve()}"] + step0_lines(summary)
    for name in ("base_mse", "detail_mse"):
        first, last = first_last(csv_column(out / "log.csv", name))
        lines.append(f"  {name.replace('_mse', '')}-channel MSE {first:.4f} -> {last:.4f} "
                     "(mean of the first and last 10% of steps)")
    if "pipeline" in summary:
        lines.append(f"  pipeline: {summary['pipeline']}; samples.png, loss_curves.png")
    return "\n".join(lines)


def step0_lines(summary: dict) -> list[str]:
    """The step-0 identity of a summary, as one line (none after a resume without it)."""
    s0 = summary.get("step0")
    if not s0:
        return []
    return [f"  step 0: base prediction within {s0['max_abs_diff_base_prediction']:.1e} of the pretrained model's, "
            f"detail prediction at most {s0['max_abs_detail_prediction']:.1e}"]


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def default_davae(model: str, quick: bool, progress: bool, mixed_precision: str = "no",
                  recipe: str = DEFAULT_RECIPE, detail_channels: Optional[int] = None) -> str:
    """A DA-VAE on ``model``'s VAE, trained on first use with train_vae.py's defaults under
    ``recipe`` (with ``detail_channels`` D when given, else D = C) and cached under a key of the
    model folder and its VAE's files (another model never reuses it), the recipe and D. It trains
    in this process, whose accelerate state is already set: with the same ``mixed_precision``
    (accelerate refuses a second, different one), which is part of the key."""
    from .cli import train_vae_parser
    from .vae import train_davae

    h = hashlib.sha256(str(Path(model).resolve()).encode())
    for f in sorted((Path(model) / "vae").glob("*")):
        h.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    precision = "" if mixed_precision == "no" else f"-{mixed_precision}"
    width = f"-d{detail_channels}" if detail_channels else ""
    folder = cache_root() / (f"{DEFAULT_DAVAE_VERSION}-{recipe}{width}{'-quick' if quick else ''}{precision}-"
                             f"{h.hexdigest()[:12]}")
    if is_complete(folder):
        return str(folder / "davae")
    steps = ["--steps", "4", "--resolution", "32", "--batch-size", "2", "--eval-images", "2"] if quick else \
            ["--steps", "300"]  # train_vae.py's defaults otherwise
    if detail_channels:
        steps += ["--detail-channels", str(detail_channels)]
    with atomic_dir(folder) as tmp:
        train_davae(train_vae_parser().parse_args(
            ["--base-vae", model, "--output-dir", str(tmp), *steps, "--recipe", recipe, "--fused",
             "--mixed-precision", mixed_precision, "--in-process"]
            + ([] if progress else ["--no-progress"])))
    return str(folder / "davae")


def load_models(args, run: TrainingRun, family: type):
    """The pretrained transformer, the DA-VAE and the training resolution. The models are built on
    first use where not given (by the main process; the others then read the cache); given ones
    were checked against each other by :func:`.cli.check_finetune`."""
    if args.model is None:
        with run.accelerator.main_process_first():
            args.model = str(family.default_model(args.quick_default, run.progress))
    if args.davae is None:
        with run.accelerator.main_process_first():
            args.davae = default_davae(args.model, args.quick_default, run.progress, args.mixed_precision, args.recipe)
    davae = DAVAE.from_pretrained(args.davae).to(run.device).eval()
    davae.requires_grad_(False)
    original = family.load_pretrained(args.model)
    resolution = args.resolution or family.default_resolution(original, davae, args)
    return original, davae, resolution


def training_images(args, run: TrainingRun, resolution: int, family: type) -> str:
    """The image folder to train on: ``--data`` (or the shipped photos), or ``--synthetic`` images
    generated first by the base pipeline."""
    if args.synthetic <= 0:
        return args.data or str(sample_photos("train"))
    folder = str(run.out / "synthetic")
    if run.is_main:
        from .synthetic import DEFAULT_PROMPTS, generate, read_prompts

        prompts = read_prompts(args.prompts) if args.prompts else list(DEFAULT_PROMPTS)
        base_pipe = family.base_pipeline_class().from_pretrained(args.model).to(run.device)
        generate(base_pipe, prompts, args.synthetic, folder, resolution, seed=args.seed, progress=run.progress)
        del base_pipe
    run.accelerator.wait_for_everyone()
    return folder


def cache_key(model: str, davae: str, data: str, resolution: int, crops: int, seed: int, extra: str = "") -> str:
    h = hashlib.sha256()
    for folder in (model, davae):
        for cfg in sorted(Path(folder).rglob("*.json")):
            h.update(str(cfg.relative_to(folder)).encode() + cfg.read_bytes())
        for w in sorted(Path(folder).rglob("*.safetensors")):
            st = w.stat()
            h.update(f"{w.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    for f in sorted(Path(data).rglob("*")):
        st = f.stat()
        h.update(f"{f.relative_to(data)}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(f"{resolution}:{crops}:{seed}:{extra}:v1".encode())
    return h.hexdigest()[:24]


def latent_cache(args, run: TrainingRun, davae: DAVAE, data: str, resolution: int, family: type) -> tuple[dict, bool]:
    """The cached latents and text embeddings of ``data`` (built by the main process if missing),
    and whether they were reused."""
    folder = cache_root() / "finetune_cache" / cache_key(args.model, args.davae, data, resolution,
                                                         args.crops_per_image, args.seed, family.text_key(args))
    with run.accelerator.main_process_first():
        reused = is_complete(folder)
        if not reused:
            encode = family.prompt_encoder(args)
            with atomic_dir(folder) as tmp:
                build_cache(encode, davae, data, resolution, args.crops_per_image, args.seed, tmp, run.progress)
    run.accelerator.print(f"latent / text cache {'reused' if reused else 'built'}: {folder}")
    return torch.load(folder / "cache.pt", map_location="cpu"), reused


@torch.no_grad()
def build_cache(encode, davae, data: str, resolution: int, crops: int, seed: int, folder: Path, progress: bool) -> None:
    """DA-VAE latents (normalised; base and detail stored apart) of ``crops`` random crops/flips
    per image, and the text embeddings (``encode(prompts) -> (embeds, pooled)``) of every caption
    plus the empty prompt."""
    from tqdm.auto import tqdm

    from .data import ImageCaptionFolder

    ds = ImageCaptionFolder(data, resolution, seed=seed)
    base, detail, captions = [], [], []
    for _ in tqdm(range(crops), desc="caching DA-VAE latents", disable=not progress):
        for i in range(len(ds)):
            item = ds[i]
            z = davae.normalize_latents(davae.encode(item["pixel_values"][None].to(davae.device)).latent_dist.mode())
            b, d = davae.split_latents(z)
            base.append(b.cpu())
            detail.append(d.cpu())
            captions.append(item["caption"])
    unique = sorted(set(captions)) + [""]
    embeds, pooled = [], []
    for i in range(0, len(unique), 8):
        e, p = encode(unique[i:i + 8])
        embeds.append(e.cpu())
        pooled.append(p.cpu())
    index = {c: i for i, c in enumerate(unique)}
    torch.save({"base": torch.cat(base), "detail": torch.cat(detail), "caption_index": torch.tensor([index[c] for c in captions]),
                "captions": unique, "prompt_embeds": torch.cat(embeds), "pooled": torch.cat(pooled)},
               folder / "cache.pt")


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
class TransformerTuner:
    """What both transformer trainers share: the trainable parameters, sharding or handing the
    model to accelerate, the optimiser and EMA built over what results, a checkpoint's state
    (written whole and read back) and the backward with its gradient check. A subclass sets
    ``args``, ``run``, ``transformer`` and ``step0`` and defines ``make_optimizer``, ``rebuild``
    and ``step``."""

    sharded: Optional[Sharded] = None
    replicate: tuple = ()  # modules inside a block used outside its forward (see Sharded)

    @staticmethod
    def trainable(model) -> list:
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def trainable_count(self) -> int:
        return sum(p.numel() for _, p in self.trainable(self.transformer))

    def make_optimizer(self, params: list) -> torch.optim.Optimizer:
        raise NotImplementedError

    def rebuild(self) -> torch.nn.Module:
        """A fresh, unsharded copy of the model as built before training (for FSDP's finish)."""
        raise NotImplementedError

    def prepare(self, state: Optional[dict]) -> int:
        """Shards the model (FSDP) or hands it to accelerate (DDP, one process), builds the
        optimiser and the EMA over its trainable weights as they then are, loads ``state`` (a
        checkpoint's) into them; returns the step to start from."""
        acc = self.run.accelerator
        if self.run.fsdp:
            self.sharded = Sharded(self.transformer, self.run.device, replicate=self.replicate)
        self.opt = self.make_optimizer([p for _, p in self.trainable(self.transformer)])
        self.ema = EMA(self.trainable(self.transformer), self.args.ema_decay)
        if self.sharded is None:
            self.transformer, self.opt = acc.prepare(self.transformer, self.opt)
        else:  # the optimiser through accelerate all the same: fp16's loss scaling steps it
            self.opt = acc.prepare(self.opt)
        self.core = acc.unwrap_model(self.transformer)
        self.transformer.train()
        return 0 if state is None else self.load_checkpoint(state)

    def load_checkpoint(self, state: dict) -> int:
        """The trained weights, optimiser state, EMA and step-0 record of a checkpoint; its step."""
        load_trainable(self.core, state["model"])
        load_optimizer_state(self.opt, state["optimizer"])
        self.ema.load_state_dict(state["ema"], like=dict(self.trainable(self.core)))
        self.step0 = state.get("step0")
        return int(state["step"])

    def checkpoint_state(self) -> dict:
        """Whole tensors whether sharded or not (collective under FSDP)."""
        return {"model": trainable_state(self.core), "optimizer": full_optimizer_state(self.opt),
                "ema": self.ema.state_dict(), "step0": self.step0}

    def backward(self, loss: torch.Tensor) -> tuple[float, bool]:
        """:func:`.common.backward_and_clip` over the trained weights."""
        return backward_and_clip(self.run.accelerator, loss, [p for _, p in self.trainable(self.core)],
                                 self.args.grad_clip, self.args.skip_grad_norm, self.sharded)

    def unsharded(self) -> tuple[Optional[torch.nn.Module], Optional[EMA]]:
        """The trained model and its EMA whole, on the main process (None elsewhere): the model
        itself without FSDP; under FSDP a :meth:`rebuild` with the gathered trained weights
        (every process must call this then)."""
        if self.sharded is None:
            return self.core, self.ema
        ema_state = self.ema.state_dict()
        model = rebuilt_whole(self.core, self.rebuild, self.run.is_main, self.run.device)
        if model is None:
            return None, None
        ema = EMA([], ema_state["decay"])
        ema.load_state_dict(ema_state)
        return model, ema


class SD3Tuner(TransformerTuner):
    """The widened SD3 transformer, its optimiser and EMA, the per-step batches and the step.

    The class methods are what another model family overrides (:mod:`.finetune_flux`): the
    default and pretrained models, text encoding, the forward call, the widening and the pipeline
    written at the end."""

    full_modules = FULL_MODULES  # trained in full beside the LoRA: the widened layers

    @staticmethod
    def default_model(quick: bool, progress: bool) -> Path:
        from .tiny import build_tiny_sd35

        return build_tiny_sd35(quick=quick, progress=progress)

    @staticmethod
    def load_pretrained(model: str):
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel.from_pretrained(model, subfolder="transformer")

    @staticmethod
    def default_resolution(original, davae: DAVAE, args=None) -> int:
        return original.config.sample_size * davae.spatial_factor

    @staticmethod
    def base_pipeline_class():
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    @staticmethod
    def text_key(args) -> str:
        """What besides the model folder decides the cached text embeddings."""
        return ""

    @classmethod
    def prompt_encoder(cls, args):
        """``encode(prompts) -> (prompt_embeds, pooled)`` with the base pipeline's text encoders."""
        pipe = cls.base_pipeline_class().from_pretrained(args.model, transformer=None, vae=None)

        def encode(prompts):
            e, _, p, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False)
            return e, p
        return encode

    def predict(self, model, xt, emb, pooled, sigmas, t):
        """The velocity ``model`` predicts at noise levels ``sigmas`` (timestep ``t`` = 1000 sigma,
        rounded as ``--timestep-rounding`` says)."""
        return model(xt, emb, pooled, t).sample

    def expand(self, original):
        return expand_transformer(original, self.D, init="zero", order=self.order, fused=self.args.fused,
                                  share_weights=True)

    @staticmethod
    def davae_pipeline(args, transformer, davae: DAVAE):
        """The sampling pipeline of the trained ``transformer`` with the base model's text encoders."""
        from ..models.pipeline import DAVAEStableDiffusion3Pipeline

        base = SD3Tuner.base_pipeline_class().from_pretrained(args.model, transformer=None, vae=None)
        return DAVAEStableDiffusion3Pipeline.from_sd3_pipeline(base, transformer, davae)

    @staticmethod
    def sampling_defaults(args) -> dict:
        return sampling_defaults(args)

    @staticmethod
    def sample_kwargs(args, pipe) -> dict:
        negative = pipe.sampling_defaults["negative_prompt"] or None
        return {"negative_prompt": negative, "guidance_scale": args.guidance}

    def __init__(self, args, run: TrainingRun, original, davae: DAVAE, cache: dict):
        self.args, self.run, self.cache = args, run, cache
        self.order, self.C, self.D = davae.config.order, davae.base_channels, davae.detail_channels
        self.step0: Optional[dict] = None
        torch.manual_seed(args.seed)  # the LoRA init, whether or not the default models were just built here
        self.transformer = self.widen(original)
        self.n_warm = args.n_warm if args.n_warm is not None else min(10000, args.steps // 2)

    def widen(self, original):
        """``original`` widened (sharing its tensors instead of copying them: a copy is a second
        model in memory, 9 GB in float32 at SD3.5-Medium's size), with LoRA or all weights
        trainable, gradient checkpointing as asked."""
        args = self.args
        transformer = self.expand(original)
        if args.full:
            transformer.requires_grad_(True)
        else:
            add_lora(transformer, args.lora_rank, args.lora_alpha, [t for t in args.lora_targets.split(",") if t],
                     self.full_modules)
        if args.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        return transformer

    def rebuild(self):
        model = self.widen(self.load_pretrained(self.args.model))
        self.cast_weights(model)
        return model

    def make_optimizer(self, params: list) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.args.lr, betas=(0.9, 0.999), weight_decay=0.0)

    def batch(self, step: int):
        """Step ``step``'s latents, noise, noise levels and text embeddings (10% empty prompts)."""
        args, run, cache = self.args, self.run, self.cache
        idx = batch_indices(len(cache["base"]), args.batch_size, args.seed, step, run.rank, run.world)
        x0 = ops.latent_concat(cache["base"][idx], cache["detail"][idx], order=self.order)
        g = step_generator(args.seed, step, run.rank)
        keys = cache["caption_index"][idx].clone()
        keys[torch.rand(len(idx), generator=g) < args.caption_dropout] = len(cache["captions"]) - 1  # the empty prompt
        sigmas = sample_sigmas(len(idx), args.shift, g)
        noise = torch.randn(x0.shape, generator=g)
        if args.nan_at_step == step:  # tests: a corrupt batch
            x0 = torch.full_like(x0, float("nan"))
        dev = run.device
        return (x0.to(dev), noise.to(dev), sigmas.to(dev), cache["prompt_embeds"][keys].to(dev), cache["pooled"][keys].to(dev))

    def check_step0(self, original) -> None:
        """The step-0 check on the first batch (not on resume: the checkpoint has the record),
        then the weights cast (:meth:`cast_weights`); before :meth:`prepare`."""
        self.step0 = step0_check(self.predict, self.transformer.to(self.run.device), original.to(self.run.device),
                                 self.batch(0), self.C, self.order)
        self.run.accelerator.print(f"step 0: {self.step0}")

    def cast_weights(self, model=None) -> None:
        """The trained weights to ``--trainable-dtype``, the frozen ones to ``--frozen-dtype``
        (after the float32 step-0 check, before sharding and before a checkpoint's weights and
        optimizer state are loaded)."""
        trained = trainable_dtype(self.args.trainable_dtype, self.args.mixed_precision)
        frozen = trainable_dtype(self.args.frozen_dtype, self.args.mixed_precision)
        for p in (model if model is not None else self.transformer).parameters():
            p.data = p.data.to(trained if p.requires_grad else frozen)

    def step(self, step: int) -> dict:
        args, acc = self.args, self.run.accelerator
        w = detail_weight(step, self.n_warm)
        x0, noise, sigmas, emb, pooled = self.batch(step)
        s = sigmas.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        t = timesteps(sigmas, args.timestep_rounding)
        with acc.autocast():
            pred = self.predict(self.transformer, xt, emb, pooled, sigmas, t)
        parts = flow_loss(pred.float(), x0, noise, sigmas, self.C, self.order, w, args.loss_mode, args.min_snr_gamma,
                          snr_sigmas=t / 1000)
        self.opt.zero_grad(set_to_none=True)
        norm, apply = self.backward(parts["loss"])
        if apply:
            self.opt.step()
            self.ema.update(self.trainable(self.core))
        self.opt.zero_grad(set_to_none=True)
        return {"step": step, "loss": parts["loss"].item(), "base_mse": parts["base_mse"].item(),
                "detail_mse": parts["detail_mse"].item(), "detail_weight": w, "grad_norm": norm, "skipped": int(not apply)}

    def plot_losses(self) -> None:
        log = self.run.out / "log.csv"
        save_curves(self.run.out / "loss_curves.png",
                    {"base channels (MSE)": csv_column(log, "base_mse"), "detail channels (MSE)": csv_column(log, "detail_mse")},
                    title=f"fine-tuning on the DA-VAE latent ({'full' if self.args.full else 'LoRA'}, N_warm={self.n_warm})")


def trainable_dtype(name: str, mixed_precision: str) -> torch.dtype:
    """``--trainable-dtype`` / ``--frozen-dtype``: 'auto' is bfloat16 under bf16 mixed precision,
    else float32."""
    if name == "auto":
        return torch.bfloat16 if mixed_precision == "bf16" else torch.float32
    return getattr(torch, name)


def timesteps(sigmas: torch.Tensor, rounding: str) -> torch.Tensor:
    """The timestep the transformer sees: ``1000 sigma``, or its floor (the released code)."""
    t = sigmas * 1000
    return t.floor() if rounding == "floor" else t


@torch.no_grad()
def step0_check(predict, transformer, original, batch, base_channels: int, order: str) -> dict:
    """The warm start of Sec. 4.1 measured on one batch: the widened model's base-channel
    prediction against the pretrained model's, its detail prediction, and both base losses;
    ``predict(model, xt, embeds, pooled, sigmas, t)`` is the forward call."""
    x0, noise, sigmas, emb, pooled = batch
    s = sigmas.view(-1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    t = sigmas * 1000
    pred = predict(transformer, xt, emb, pooled, sigmas, t)
    pred_base, pred_detail = split_channels(pred, base_channels, order)
    base_x0, base_xt, base_noise = (split_channels(x, base_channels, order)[0] for x in (x0, xt, noise))
    ref = predict(original, base_xt, emb, pooled, sigmas, t)
    return {
        "max_abs_diff_base_prediction": float((pred_base - ref).abs().max()),
        "max_abs_detail_prediction": float(pred_detail.abs().max()),
        "base_loss_expanded": float(flow_loss(pred, x0, noise, sigmas, base_channels, order, w=0.0)["loss"]),
        "base_loss_original": float(((ref - (base_noise - base_x0)) ** 2).mean()),
    }


def sampling_defaults(args) -> dict:
    """What the saved pipeline samples with when not told otherwise: the recipe's steps, guidance
    and negative prompt (``--negative-prompt`` overrides it) and the training shift."""
    defaults = recipe_defaults("sampling", args.recipe) | {"shift": args.shift, "recipe": args.recipe}
    if args.negative_prompt is not None:
        defaults["negative_prompt"] = args.negative_prompt
    return defaults


def finish(transformer, ema: EMA, args, out: Path, resolution: int, family: type) -> Path:
    """EMA weights into the transformer, LoRA merged, pipeline saved, sample grid drawn."""
    from .synthetic import DEFAULT_PROMPTS

    transformer.eval().float()  # trained weights may be bfloat16 (--trainable-dtype); the EMA is float32
    ema.copy_to([(n, p) for n, p in transformer.named_parameters() if n in ema.shadow])
    if not args.full:
        merge_lora(transformer)
    davae = DAVAE.from_pretrained(args.davae).to(transformer.device).eval()
    pipe = family.davae_pipeline(args, transformer, davae)
    pipe.scheduler.register_to_config(shift=args.shift)
    pipe.sampling_defaults = family.sampling_defaults(args)
    pipe.save_pretrained(out / "pipeline")
    prompts = list(DEFAULT_PROMPTS)[:args.sample_prompts]
    images = pipe(prompts, height=resolution, width=resolution, num_inference_steps=args.sample_steps,
                  generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))], output_type="pt",
                  **family.sample_kwargs(args, pipe)).images
    tokens = tokens_per_image(pipe, resolution)
    save_grid(out / "samples.png", [images * 2 - 1], [f"DA-VAE\n{resolution}x{resolution}\n{tokens} tokens"],
              [prompts], title=f"fixed prompts, {args.sample_steps} steps, guidance {args.guidance}, EMA weights")
    return out / "pipeline"
