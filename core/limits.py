"""Ranges of the user's options, in a module that imports nothing heavy (the command line reads them to build its
parser, before torch or diffusers are needed)."""

MIN_SIDE = 64  # short side of an input image or of the working size
MAX_SIDE = 4096
# the working image keeps the painting's aspect; past this ratio of long to short side it would be a strip the
# models were never trained on, and its long side grows without bound (20000x100 at short side 128: 25600 px)
MAX_ASPECT = 4.0
MAX_SHORT_SIDE = 2048  # of the working size
MAX_INTERVAL_S = 3600.0  # option ranges: wide enough for any use, narrow enough to refuse typos and overflows
MAX_KEYFRAMES = 10000
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0  # far past any useful scale; larger ones overflow to NaN in the first step
FRAME_SIZES = ("painting", "working")  # the size frames are written at: the painting's own, or the working size
