"""The training and data stack over the models: what the scripts in ``train/`` run.

``common`` (per-step seeds, atomic checkpoints, the CSV log, :class:`~.common.TrainingRun`),
``vae`` and ``finetune`` (the two trainers and their command lines), ``flow`` (the fine-tuning
objective, Eqs. 12-13), ``lora``, ``data`` (captioned image folders, the shipped photos),
``synthetic``, ``evaluation`` (PSNR, SSIM, alignment statistics), ``sampling``, ``plot``,
``cache`` and ``tiny`` (the embedded tiny SD3.5 pipeline). Nothing here is imported by
``import davae_ext``; these modules import accelerate, peft, tqdm and scikit-image on use.
"""
