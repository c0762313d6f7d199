"""Train a DA-VAE (paper Sec. 3) on top of a pretrained diffusers AutoencoderKL.

    python train/train_vae.py                                    # embedded tiny SD3.5 VAE, shipped photos
    python train/train_vae.py --base-vae PATH --data DIR --resolution 1024 --mixed-precision bf16
    accelerate launch train/train_vae.py ...                     # several GPUs / machines
    torchrun --nproc_per_node 2 train/train_vae.py ...           # two CPU processes (gloo)

The base encoder is frozen; the detail encoder trunk is frozen by default (the released SD3 recipe:
only its new down block trains, plus the up block and the decoder). Loss: L1 x 2.0 + KL x 1e-7 +
alignment (+ LPIPS x 1.0 with --lpips-weights, + PatchGAN hinge x 0.1 with --gan). --recipe
released (the default) compares with the base VAE's own reconstruction, L1 on [0, 1], alignment
x 0.2, cosine learning rate; --recipe paper with the image, alignment x 1.0, the GAN on
(docs/recipes.md). Each step's batch, crops and noise depend only on (seed, step), so --resume
continues exactly where a killed run stopped.

Writes under --output-dir: log.csv, checkpoints/step_*.pt (atomic), loss_curves.png,
reconstructions.png (rows: input, base VAE at 1/2 resolution upsampled, DA-VAE, base VAE at full
resolution), eval.json, and
davae/ (save_pretrained, with the detail latent statistics).
"""

from davae_ext.training.cli import check_train_vae, exit_launched_process, train_vae_parser


def main(argv=None):
    parser = train_vae_parser(__doc__)
    args = check_train_vae(parser, parser.parse_args(argv))
    from davae_ext.training.vae import train_davae

    return train_davae(args)


if __name__ == "__main__":
    main()
    exit_launched_process()
