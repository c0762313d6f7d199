"""The training and sampling scripts at SD3.5-Medium's full size, run as a user runs them, with the
wall time, seconds per step and peak resident memory of each, fused and plain.

    python bench/full_size.py --output-dir outputs/full_size [--model FOLDER]

Without ``--model`` it first writes the random-weight SD3.5-Medium pipeline folder
(``python -m davae_ext.training.full_size``; 9.6 GiB). Then, one process at a time:

1. ``train/train_vae.py --base-vae FOLDER`` for ``--vae-steps`` steps at ``--vae-resolution``,
   ``--fused`` (this run's DA-VAE is the one the next steps use) and plain;
2. ``train/finetune_sd35.py --model FOLDER`` at ``--resolution`` for ``--steps`` LoRA steps (rank
   ``--lora-rank`` on the released targets, gradient checkpointing on, batch 1), ``--fused`` (it
   writes the pipeline: a one-prompt, ``--sample-steps`` grid) and plain (``--no-sample``);
3. ``train/sample.py`` on that pipeline at ``--resolution`` with ``--sample-steps`` steps, fused and
   ``--no-fused``.

Peak memory is each script process's ``ru_maxrss`` (``os.wait4``), and that of training alone
from the training scripts' ``summary.json``. Seconds per step come from the
scripts' own ``log.csv`` (the first step includes warm-up) and ``samples.json``. Everything goes to
``--output-dir``: each run's folder and stdout, ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a ginger tabby cat looking to the side"


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--output-dir", default="outputs/full_size", help="where everything goes (default: outputs/full_size)")
    a("--model", default=None, help="SD3.5-Medium pipeline folder (default: write the random-weight one into "
                                    "--output-dir/sd35m first)")
    a("--vae-steps", type=int, default=2, help="train_vae.py steps (default: 2)")
    a("--vae-resolution", type=int, default=256, help="train_vae.py image size, trained uncropped (default: 256)")
    a("--resolution", type=int, default=1024, help="fine-tuning and sampling image size (default: 1024)")
    a("--steps", type=int, default=2, help="finetune_sd35.py LoRA steps (default: 2)")
    a("--lora-rank", type=int, default=256, help="LoRA rank and alpha (default: 256)")
    a("--sample-steps", type=int, default=2, help="sample.py denoising steps (default: 2)")
    a("--only", default="vae,finetune,sample", help="which stages to run (default: vae,finetune,sample)")
    return p.parse_args(argv)


def run(name: str, cmd: list[str], out: Path) -> dict:
    """One script in its own process; its wall time, exit status and peak resident memory."""
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
    with open(out / f"{name}.log", "w") as log:
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    result = {"name": name, "command": cmd, "returncode": os.waitstatus_to_exitcode(status),
              "wall_s": round(time.time() - start, 1), "peak_rss_gib": round(usage.ru_maxrss / 2 ** 20, 2)}
    print(f"    -> exit {result['returncode']}, {result['wall_s']} s, peak RSS {result['peak_rss_gib']} GiB", flush=True)
    return result


def training(folder: Path) -> dict:
    """Per-step wall times from a training run's log.csv (the column of cumulative seconds) and the
    peak resident memory at the end of training from its summary.json (before any final sampling)."""
    from davae_ext.training.common import csv_column

    t = csv_column(folder / "log.csv", "seconds")
    record = {"step_s": [round(b - a, 1) for a, b in zip([0.0] + t, t)]}
    if (folder / "summary.json").exists():
        record["train_peak_rss_gib"] = json.loads((folder / "summary.json").read_text()).get("peak_rss_gib")
    return record


def main(argv=None) -> None:
    args = parse(argv)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py, stages, results = sys.executable, args.only.split(","), []
    model = args.model
    if model is None:
        model = str(out / "sd35m")
        if not (Path(model) / "model_index.json").exists():
            results.append(run("build_folder", [py, "-m", "davae_ext.training.full_size", "--output-dir", model], out))
    davae = str(out / "vae_fused" / "davae")
    if "vae" in stages:
        vae = [py, "train/train_vae.py", "--base-vae", model, "--steps", str(args.vae_steps), "--resolution",
               str(args.vae_resolution), "--train-crop", str(args.vae_resolution), "--eval-images", "2", "--no-progress"]
        results.append(run("vae_fused", vae + ["--fused", "--output-dir", str(out / "vae_fused")], out)
                       | training(out / "vae_fused"))
        results.append(run("vae_plain", vae + ["--no-eval", "--output-dir", str(out / "vae_plain")], out)
                       | training(out / "vae_plain"))
    if "finetune" in stages:
        ft = [py, "train/finetune_sd35.py", "--model", model, "--davae", davae, "--resolution", str(args.resolution),
              "--steps", str(args.steps), "--batch-size", "1", "--lora-rank", str(args.lora_rank), "--lora-alpha",
              str(args.lora_rank), "--gradient-checkpointing", "--crops-per-image", "1", "--no-progress"]
        results.append(run("finetune_fused", ft + ["--fused", "--sample-steps", str(args.sample_steps), "--sample-prompts",
                                                   "1", "--output-dir", str(out / "finetune_fused")], out)
                       | training(out / "finetune_fused"))
        results.append(run("finetune_plain", ft + ["--no-sample", "--output-dir", str(out / "finetune_plain")], out)
                       | training(out / "finetune_plain"))
    if "sample" in stages:
        sample = [py, "train/sample.py", "--pipeline", str(out / "finetune_fused" / "pipeline"), "--resolution",
                  str(args.resolution), "--steps", str(args.sample_steps), "--batch-size", "1", "--prompt", PROMPT,
                  "--device", "cpu", "--no-progress"]
        for name, flag in (("sample_fused", "--fused"), ("sample_plain", "--no-fused")):
            r = run(name, sample + [flag, "--output-dir", str(out / name)], out)
            record = out / name / "samples.json"
            if record.exists():
                ips = json.loads(record.read_text())["images_per_s"]
                r |= {"s_per_image": round(1 / ips, 1), "s_per_step": round(1 / ips / args.sample_steps, 1)}
            results.append(r)
    (out / "results.json").write_text(json.dumps({"model": model, "args": vars(args), "runs": results}, indent=1))
    lines = ["| run | exit | wall (s) | per step (s) | peak RSS (GiB) | peak RSS of training (GiB) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        per = r.get("step_s", r.get("s_per_step", ""))
        lines.append(f"| {r['name']} | {r['returncode']} | {r['wall_s']} | {per} | {r['peak_rss_gib']} | "
                     f"{r.get('train_peak_rss_gib', '')} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
