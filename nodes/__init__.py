"""ComfyUI nodes of the Inverse Painting pack: thin adapters over ``core/`` (classic V1 node API).

Importable without ComfyUI (the unit tests call the node classes directly): every ``comfy`` /
``folder_paths`` access goes through :mod:`.comfy_bridge`, which falls back to plain torch. Inside
ComfyUI, importing this package registers the ``models/inverse_painting/`` model folder and places the bundled
example painting in ComfyUI's input folder (when no file has its name) for the example workflows.
"""
from __future__ import annotations

from . import comfy_bridge
from .evaluation_node import NODE_CLASS_MAPPINGS as _EVAL_NODES
from .evaluation_node import NODE_DISPLAY_NAME_MAPPINGS as _EVAL_NAMES
from .model_nodes import InversePaintingLoader, InversePaintingTextModelLoader
from .output_nodes import InversePaintingSaveProcess, InversePaintingTimeMap
from .scheduler import InversePaintingScheduler
from .step_nodes import (InversePaintingDifferenceMask, InversePaintingMaskGenerator,
                         InversePaintingRenderKeyframe, InversePaintingTextInstruction)
from .timelapse import InversePaintingTimelapse

comfy_bridge.register_model_folder()  # no-op outside ComfyUI
comfy_bridge.place_example_painting()  # likewise

# Node ids are stable: saved workflows reference them.
NODE_CLASS_MAPPINGS = {
    "InversePaintingLoader": InversePaintingLoader,
    "InversePaintingTextModelLoader": InversePaintingTextModelLoader,
    "InversePaintingTextInstruction": InversePaintingTextInstruction,
    "InversePaintingDifferenceMask": InversePaintingDifferenceMask,
    "InversePaintingMaskGenerator": InversePaintingMaskGenerator,
    "InversePaintingRenderKeyframe": InversePaintingRenderKeyframe,
    "InversePaintingScheduler": InversePaintingScheduler,
    "InversePaintingTimelapse": InversePaintingTimelapse,
    "InversePaintingSaveProcess": InversePaintingSaveProcess,
    "InversePaintingTimeMap": InversePaintingTimeMap,
    **_EVAL_NODES,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "InversePaintingLoader": "Load Inverse Painting",
    "InversePaintingTextModelLoader": "Load Inverse Painting Text Model (LLaVA)",
    "InversePaintingTextInstruction": "Inverse Painting: Text Instruction",
    "InversePaintingDifferenceMask": "Inverse Painting: Difference Mask",
    "InversePaintingMaskGenerator": "Inverse Painting: Mask Generator",
    "InversePaintingRenderKeyframe": "Inverse Painting: Render Keyframe",
    "InversePaintingScheduler": "Inverse Painting: Scheduler",
    "InversePaintingTimelapse": "Inverse Painting: Time-lapse",
    "InversePaintingSaveProcess": "Inverse Painting: Save Painting Process",
    "InversePaintingTimeMap": "Inverse Painting: Time Map",
    **_EVAL_NAMES,
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
