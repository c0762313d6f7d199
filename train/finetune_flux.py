"""Fine-tune a FLUX-class transformer (FLUX.1-dev / -schnell architecture) on a DA-VAE latent: 2x the
resolution with the same number of tokens (1024 px from a 32 x 32 token grid).

    python train/finetune_flux.py --fused                     # embedded tiny FLUX + tiny DA-VAE, shipped photos
    python train/finetune_flux.py --model FLUX1_DEV_DIR --davae DAVAE_DIR --data DIR --mixed-precision bf16 --fused
    accelerate launch [--config_file train/configs/fsdp.yaml] train/finetune_flux.py ...

The transformer is widened with davae_ext.models.flux.expand_flux_transformer(init="zero"): x_embedder
and proj_out get the detail channels in FLUX's packed order, so at step 0 the model is the
pretrained one on the base channels and predicts 0 for the detail channels (checked on the first
batch, recorded in summary.json). x_embedder and proj_out train in full, the rest through LoRA on
the double and single blocks (or fully with --full). Objective: rectified flow with logit-normal
timesteps, shifted by FLUX's dynamic shift at the training token count unless --shift is given; a
guidance-distilled model (guidance_embeds) sees --train-guidance; the detail channels' weight is
ramped by Eq. 12 and normalised by Eq. 13 (--recipe as for finetune_sd35.py). --fused runs the
latent concatenation through the fused kernel and the widened layers as one GEMM each (without it:
base and detail parts apart, the pretrained arithmetic bit for bit at step 0). DA-VAE latents and
text embeddings are computed once per (model, DA-VAE, data, text length) and cached on disk.

Writes under --output-dir: log.csv, checkpoints/ (atomic; --resume continues exactly),
loss_curves.png, samples.png (fixed prompts, EMA weights), summary.json and pipeline/ (a
DAVAEFluxPipeline folder for train/sample.py).
"""

from davae_ext.training.cli import check_finetune, exit_launched_process, finetune_parser


def main(argv=None):
    parser = finetune_parser(__doc__, family="flux")
    args = check_finetune(parser, parser.parse_args(argv), family="flux")
    from davae_ext.training.finetune_flux import finetune_flux

    return finetune_flux(args)


if __name__ == "__main__":
    main()
    exit_launched_process()
