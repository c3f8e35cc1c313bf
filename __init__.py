"""Inverse Painting: the Python package ``inverse_painting`` and, at the same time, a ComfyUI node pack.

ComfyUI imports this file and reads ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS``. They are
resolved lazily (PEP 562) so that library and CLI users (``inverse_painting.core``, ``.training``, ...)
do not pay for importing the node modules.
"""
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]


def __getattr__(name):
    if name in __all__:
        from . import nodes

        return getattr(nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
