"""Fine-tune an SD3 / SD3.5 transformer on a DA-VAE latent (paper Sec. 4): 2x the resolution with
the same number of tokens.

    python train/finetune_sd35.py --fused                     # embedded tiny SD3.5 + tiny DA-VAE, shipped photos
    python train/finetune_sd35.py --model SD35M_DIR --davae DAVAE_DIR --data DIR --mixed-precision bf16 --fused
    python train/finetune_sd35.py --synthetic 1000 --prompts prompts.txt ...   # train on base-model images
    accelerate launch train/finetune_sd35.py ...  /  torchrun --nproc_per_node 2 train/finetune_sd35.py ...

The transformer is widened with davae_ext.models.sd3.expand_transformer(init="zero"): at step 0 it is the
pretrained model on the base channels and predicts 0 for the detail channels (the script checks
this on the first batch and records it in summary.json). The patch embedder and output head train
in full, the rest through LoRA (rank / alpha 256 on to_q, to_k, to_v, to_out.0, ff.net.2,
norm1.linear) or fully with --full. Objective: SD3 rectified flow with logit-normal timesteps on
the shifted schedule (shift 4.0), 10% prompt dropout, the detail channels' weight ramped by Eq. 12
and normalised by Eq. 13. --recipe released (the default) uses the released code's x0 + min-SNR
form, gradient clip 0.5 and skips steps with a gradient norm above 10; --recipe paper the
velocity form (docs/recipes.md). DA-VAE latents and text embeddings are computed once per
(model, DA-VAE, data) and cached on disk.

Writes under --output-dir: log.csv, checkpoints/ (atomic; --resume continues exactly),
loss_curves.png (base and detail channels), samples.png (fixed prompts, 2x resolution, EMA
weights), summary.json and pipeline/ (a DAVAEStableDiffusion3Pipeline folder for train/sample.py).
"""

from davae_ext.training.cli import check_finetune, exit_launched_process, finetune_parser


def main(argv=None):
    parser = finetune_parser(__doc__)
    args = check_finetune(parser, parser.parse_args(argv))
    from davae_ext.training.finetune import finetune

    return finetune(args)


if __name__ == "__main__":
    main()
    exit_launched_process()
