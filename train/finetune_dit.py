"""Fine-tune a class-conditional DiT on a DA-VAE latent (the paper's ImageNet system): 2x the
resolution with the same number of tokens.

    python train/finetune_dit.py --fused                          # embedded tiny DiT + its DA-VAE, shipped photo classes
    python train/finetune_dit.py --model DIT_DIR --davae DAVAE_DIR --data IMAGEFOLDER --mixed-precision bf16 --fused
    accelerate launch train/finetune_dit.py ...  /  torchrun --nproc_per_node 2 train/finetune_dit.py ...

--model is a folder with 'transformer' (a diffusers DiTTransformer2DModel) and 'vae' (AutoencoderKL)
subfolders, such as the tiny DiT's or a diffusers DiTPipeline's; --data a class-labelled folder
(one subfolder per class, as torchvision's ImageFolder). The transformer is widened with
davae_ext.models.dit.expand_dit (--init zero: at step 0 it is the pretrained model on the base
channels and predicts 0 for the detail channels; the script checks this on the first batch) and
trained in full. Objective (--recipe imagenet, the released ImageNet code): rectified flow with
logit-normal timesteps, the detail channels' weight ramped by Eq. 12 and normalised by Eq. 13,
plus the cosine velocity term; 10% of labels dropped to the null class for CFG. The pretrained
model must use the same flow convention (prediction eps - x0 at timestep 1000 sigma, as the tiny
DiT); a DDPM-trained DiT is re-purposed, not continued. docs/recipes.md tables the choices.

Writes under --output-dir: log.csv, checkpoints/ (atomic; --resume continues exactly),
loss_curves.png (base and detail channels, cosine term), samples.png (one row per class, EMA
weights), summary.json and pipeline/ (a DAVAEDiTPipeline folder for train/sample_dit.py).
"""

from davae_ext.training.cli import check_finetune_dit, exit_launched_process, finetune_dit_parser


def main(argv=None):
    parser = finetune_dit_parser(__doc__)
    args = check_finetune_dit(parser, parser.parse_args(argv))
    from davae_ext.training.finetune_dit import finetune_dit

    return finetune_dit(args)


if __name__ == "__main__":
    main()
    exit_launched_process()
