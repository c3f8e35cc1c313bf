"""The three trainers (spec section 4) on accelerate, sharing one data pipeline.

* :mod:`.data` -- the raw-layout pair dataset (images, GT text, GT difference masks, CFG drop flags);
* :mod:`.mask_generator` -- the mask generator ("RP"), BCE on latent-size GT masks;
* :mod:`.renderer` -- the renderer (UNet + ReferenceNet + feature encoder + next-CLIP + time encoder);
* :mod:`.common` -- accelerator set-up, deterministic per-step randomness, EMA, checkpoint export.

Each trainer is a module with a CLI: ``python -m inverse_painting.training.trainers.mask_generator --help``.
"""
