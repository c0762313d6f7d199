"""The paper's component ablation (Table 5) at toy scale on the embedded tiny DiT: the full recipe
against each component removed, with the same steps, seed and data.

    python bench/ablate_dit.py --output-dir outputs/ablate_dit [--steps 300] [--vae-steps 300]

- full: alignment, zero init, loss schedule (train/finetune_dit.py's defaults);
- w/o alignment: a DA-VAE trained with --align-weight 0 (otherwise as the default DA-VAE);
- w/o zero init: --init random;
- w/o loss schedule: --n-warm 0 (detail weight 1 from step 0).

Reports, per configuration: the flow objective at the end over every cached latent at fixed noise
levels (Eq. 13 at full detail weight; base and detail MSE), the training loss, and the DA-VAE's
alignment cosine cos(Proj(z_d), z) on the held-out photos. Toy-scale numbers show direction, not
the paper's FIDs. Writes ``ablate_dit.json`` and ``detail_mse.png`` under --output-dir.
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
    p.add_argument("--output-dir", default="outputs/ablate_dit", help="(default: outputs/ablate_dit)")
    p.add_argument("--steps", type=int, default=300, help="finetune_dit.py steps per configuration (default: 300)")
    p.add_argument("--vae-steps", type=int, default=300, help="steps of the DA-VAE without alignment (default: 300, "
                                                              "as the default DA-VAE)")
    args = p.parse_args(argv)
    from davae_ext.training.common import csv_column, first_last
    from davae_ext.training.finetune import default_davae
    from davae_ext.training.finetune_dit import DETAIL_RATIO
    from davae_ext.training.plot import save_curves
    from davae_ext.training.tiny import build_tiny_sd35
    from davae_ext.training.tiny_dit import build_tiny_dit

    out = Path(args.output_dir)
    model = str(build_tiny_dit())
    build_tiny_sd35()
    davae = default_davae(model, False, True, recipe="imagenet", detail_channels=DETAIL_RATIO * 16)
    no_align = out / "davae_no_align"
    if not (no_align / "davae" / "config.json").is_file():
        run("train_vae.py", ["--base-vae", model, "--recipe", "imagenet", "--detail-channels", str(DETAIL_RATIO * 16),
                             "--align-weight", "0", "--steps", str(args.vae_steps), "--fused", "--output-dir", str(no_align)])
    configs = {
        "full": ["--davae", davae],
        "w/o alignment": ["--davae", str(no_align / "davae")],
        "w/o zero init": ["--davae", davae, "--init", "random"],
        "w/o loss schedule": ["--davae", davae, "--n-warm", "0"],
    }
    result, curves = {}, {}
    for name, extra in configs.items():
        folder = out / name.replace("/", "").replace(" ", "_")
        run("finetune_dit.py", ["--steps", str(args.steps), "--fused", "--no-sample", "--output-dir", str(folder), *extra])
        summary = json.loads((folder / "summary.json").read_text())
        davae_eval = json.loads((Path(extra[1]).parent / "eval.json").read_text())
        log = folder / "log.csv"
        result[name] = {"eval_flow": summary["eval_flow"], "step0": summary["step0"], "seconds": summary["seconds"],
                        "loss_first_last_10pct": list(first_last(csv_column(log, "loss"))),
                        "align_cosine": davae_eval["alignment"]["align_cosine"],
                        "davae_psnr_db": davae_eval["davae"]["psnr_db"]}
        curves[name] = csv_column(log, "detail_mse")
    (out / "ablate_dit.json").write_text(json.dumps(result, indent=1))
    save_curves(out / "detail_mse.png", curves, title=f"detail-channel velocity MSE, {args.steps} steps each",
                ylabel="velocity MSE")
    print(f"{'configuration':20s} {'flow':>8s} {'base MSE':>9s} {'detail MSE':>10s} {'align cos':>9s}")
    for name, r in result.items():
        e = r["eval_flow"]
        print(f"{name:20s} {e['flow']:8.4f} {e['base_mse']:9.4f} {e['detail_mse']:10.4f} {r['align_cosine']:9.3f}")
    return result


if __name__ == "__main__":
    main()
