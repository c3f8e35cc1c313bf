"""ComfyUI entry point of the Inverse Painting node pack.

ComfyUI imports this file; outside ComfyUI the package is the plain Python library
`inverse_painting` (core, models, training, evaluation) and this module exports no nodes.
"""
try:  # ComfyUI present: register the nodes
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F401
except ImportError:  # plain library use, no ComfyUI
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
