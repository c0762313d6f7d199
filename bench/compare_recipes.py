"""Run train_vae.py and finetune_sd35.py under each recipe with the same steps and seed, one after
the other, and compare: held-out PSNR against the image and against the base VAE's
reconstruction, the alignment cosine, the fine-tuning loss curves.

    python bench/compare_recipes.py --output-dir outputs/compare_recipes [--vae-steps 300] [--finetune-steps 300]

Writes ``compare_recipes.json`` and ``finetune_losses.png`` (both recipes' base- and
detail-channel MSE) under --output-dir; each run's own folder sits beside them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, args: list[str]) -> None:
    subprocess.run([sys.executable, str(ROOT / "train" / script), *args, "--no-progress"], check=True)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="outputs/compare_recipes", help="(default: outputs/compare_recipes)")
    p.add_argument("--recipes", default="released,paper", help="comma-separated (default: released,paper)")
    p.add_argument("--vae-steps", type=int, default=300, help="train_vae.py steps per recipe (default: 300)")
    p.add_argument("--finetune-steps", type=int, default=300, help="finetune_sd35.py steps per recipe (default: 300)")
    args = p.parse_args(argv)
    from davae_ext.training.common import csv_column, first_last
    from davae_ext.training.plot import save_curves

    out = Path(args.output_dir)
    result, curves = {}, {}
    for recipe in args.recipes.split(","):
        vae_dir, ft_dir = out / f"vae_{recipe}", out / f"finetune_{recipe}"
        run("train_vae.py", ["--recipe", recipe, "--steps", str(args.vae_steps), "--fused", "--output-dir", str(vae_dir)])
        run("finetune_sd35.py", ["--recipe", recipe, "--steps", str(args.finetune_steps), "--fused",
                                 "--davae", str(vae_dir / "davae"), "--output-dir", str(ft_dir)])
        vae_summary = json.loads((vae_dir / "summary.json").read_text())
        ev = vae_summary["eval"]
        ft_summary = json.loads((ft_dir / "summary.json").read_text())
        base, detail = csv_column(ft_dir / "log.csv", "base_mse"), csv_column(ft_dir / "log.csv", "detail_mse")
        result[recipe] = {
            "vae_seconds": vae_summary["seconds"],
            "davae_psnr_db": ev["davae"]["psnr_db"],
            "davae_psnr_vs_base_reconstruction_db": ev["davae"]["psnr_vs_base_reconstruction_db"],
            "base_half_upsampled_psnr_db": ev["base_half_upsampled"]["psnr_db"],
            "base_full_psnr_db": ev["base_full"]["psnr_db"],
            "align_cosine": ev["alignment"]["align_cosine"],
            "finetune_seconds": ft_summary["seconds"],
            "finetune_skipped_steps": ft_summary["skipped_steps"],
            "finetune_loss_first_last": [csv_column(ft_dir / "log.csv", "loss")[i] for i in (0, -1)],
            "base_mse_first_last_10pct": list(first_last(base)),
            "detail_mse_first_last_10pct": list(first_last(detail)),
        }
        curves[f"{recipe}: base MSE"] = base
        curves[f"{recipe}: detail MSE"] = detail
    (out / "compare_recipes.json").write_text(json.dumps(result, indent=1))
    save_curves(out / "finetune_losses.png", curves, title="fine-tuning under each recipe (velocity MSE per channel group)",
                ylabel="velocity MSE")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
