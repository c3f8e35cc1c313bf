"""CLIP ViT-B/32 image embeddings of the canvas and the target (renderer conditions).

transformers' CLIPImageProcessor (short side 224 bicubic, centre crop 224, CLIP mean/std; the PIL
backend, as the release used) and CLIPVisionModel's ``pooler_output``: the post-LayerNorm CLS vector
*without* the visual projection.
"""
from __future__ import annotations

import numpy as np
import torch


class ClipImageEmbedder:
    def __init__(self, processor, vision_model):
        self.processor = processor
        self.vision = vision_model

    def pixel_values(self, image_uint8: np.ndarray) -> torch.Tensor:
        from PIL import Image

        return self.processor(images=Image.fromarray(image_uint8), return_tensors="pt").pixel_values

    @torch.no_grad()
    def __call__(self, image_uint8: np.ndarray) -> torch.Tensor:
        """uint8 HWC -> (1, D) pooled embedding."""
        px = self.pixel_values(image_uint8).to(self.vision.device, self.vision.dtype)
        return self.vision(pixel_values=px).pooler_output
