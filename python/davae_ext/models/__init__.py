"""The models over the kernel library: the DA-VAE (:mod:`.davae`), the SD3 transformer widened to
its latent (:mod:`.sd3`; FLUX-class transformers: :mod:`.flux`), the sampling pipelines
(:mod:`.pipeline`, :mod:`.flux_pipeline`) and the DA-VAE training losses
(:mod:`.losses`). They import diffusers, so nothing here is imported by ``import davae_ext``;
``davae_ext.DAVAE`` and friends load them on first use."""
