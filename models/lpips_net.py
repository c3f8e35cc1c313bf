"""LPIPS perceptual distances on plain torch (no torchvision, no `lpips` import).

Two metrics share one module, :class:`PerceptualDistance`:

* ``lpips_alex`` -- LPIPS v0.1 with the AlexNet trunk, as used by the official code for the difference
  mask (spatial) and the stop rule (scalar). The trunk is an ``nn.Sequential`` called ``features`` laid out
  exactly like torchvision's ``alexnet().features`` so torchvision checkpoints (``features.N.weight``) load
  as they are; the linear heads use the lpips package's key names (``lin{i}.model.1.weight``). The ImageNet
  trunk is not redistributable here, so it must be supplied as a local file (see :data:`ALEXNET_URL`).
* ``stlpips_alex`` -- shift-tolerant LPIPS (Ghildyal & Liu, ECCV 2022): an anti-aliased AlexNet (stride-1
  first conv, blur-pool downsampling with reflection padding, stride-1 max pools) with its own heads. Its
  complete weights ship inside the ``stlpips-pytorch`` wheel, so it works offline; values are similar in
  scale to LPIPS but not identical.

Both compute: scale the [-1, 1] input per channel, tap five ReLU outputs, unit-normalise each over
channels (eps 1e-10), squared difference, 1x1 conv head, then either the spatial mean (scalar) or a
bilinear upsample to the input size (spatial map), summed over the five layers.

Weight files are located without executing the lpips / stlpips_pytorch packages (their imports need
torchvision, which is broken on CPU-only installs): we only ask importlib where the package folder is.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserInputError

LPIPS_ALEX = "lpips_alex"
STLPIPS_ALEX = "stlpips_alex"
#: metric names for UIs; the offline-capable one first
PERCEPTUAL_METRICS = (STLPIPS_ALEX, LPIPS_ALEX)

ALEX_CHANNELS = (64, 192, 384, 256, 256)
NORM_EPS = 1e-10  # as lpips.normalize_tensor
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
#: file names looked for in ``weights_dir`` for the LPIPS AlexNet trunk (torchvision key names)
BACKBONE_FILENAMES = (
    "alexnet_features.pth",
    "alexnet_features.safetensors",
    "alexnet-owt-7be5be79.pth",
    "alexnet.pth",
    "alexnet.safetensors",
)
HEADS_FILENAMES = ("alex.pth", "alex.safetensors")
STLPIPS_FILENAMES = ("alex_shift_tolerant.pth", "alex_shift_tolerant.safetensors")
LPIPS_HEADS_IN_WHEEL = ("lpips", "weights/v0.1/alex.pth")
STLPIPS_IN_WHEEL = ("stlpips_pytorch", "weights/vST0.0/alex_shift_tolerant.pth")


class MissingWeightsError(UserInputError, FileNotFoundError):
    """A weight file the metric needs is not available locally."""


class UnreadableWeightsError(UserInputError, RuntimeError):
    """A weight file that is there but cannot be used (truncated, a folder, not a state dict, wrong keys)."""


# --------------------------------------------------------------------------------------------------
# building blocks


class ScalingLayer(nn.Module):
    """(x - shift) / scale per RGB channel; input in [-1, 1] (LPIPS v0.1 input normalisation)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT, dtype=torch.float32)[None, :, None, None])
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE, dtype=torch.float32)[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class LinearHead(nn.Module):
    """1x1 conv (no bias) to one channel. Slot 0 stands in for the training-time dropout of the lpips
    package so that the conv's key is ``model.1.weight`` as in the released head files."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, stride=1, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class AlexNetTrunk(nn.Module):
    """torchvision-compatible AlexNet ``features``; returns relu1..relu5."""

    # end index (exclusive) of each tap in ``features``: slices [0:2], [2:5], [5:8], [8:10], [10:12]
    TAP_ENDS = (2, 5, 8, 10, 12)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # unused by LPIPS; kept so the layout is torchvision's
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, start = [], 0
        for end in self.TAP_ENDS:
            for i in range(start, end):
                x = self.features[i](x)
            taps.append(x)
            start = end
        return taps


class BlurDownsample(nn.Module):
    """Anti-aliased stride-2 downsampling: reflection pad by 2 on every side, then a depthwise 3x3
    binomial ([1,2,1] outer product / 16) filter with stride 2. The filter is a buffer called ``filt``
    because the ST-LPIPS weight file stores it under that name."""

    def __init__(self, channels: int, stride: int = 2, pad: int = 2):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        k = a[:, None] * a[None, :]
        self.register_buffer("filt", (k / k.sum())[None, None].repeat(channels, 1, 1, 1))
        self.stride = stride
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad,) * 4, mode="reflect")
        return F.conv2d(x, self.filt, stride=self.stride, groups=x.shape[1])


class ShiftTolerantAlexTrunk(nn.Module):
    """The shift-tolerant AlexNet of ST-LPIPS (variant ``shift_tolerant``, blur filter size 3).

    Relative to AlexNet every strided operation becomes "stride 1, then blur-pool by 2": conv1 runs at
    stride 1 followed by a blur-downsample (4x overall with the next one), the max pools run at stride 1
    followed by a blur-downsample. Module indices follow the weight file (``slice1.0``, ``slice2.5`` ...).
    """

    def __init__(self):
        super().__init__()

        def seq(*items):
            return nn.Sequential(OrderedDict((str(i), m) for i, m in items))

        self.slice1 = seq((0, nn.Conv2d(3, 64, 11, stride=1, padding=2)), (1, BlurDownsample(64)), (2, nn.ReLU()))
        self.slice2 = seq(
            (3, nn.MaxPool2d(3, stride=1)), (4, BlurDownsample(64)),
            (5, nn.Conv2d(64, 192, 5, padding=2)), (6, nn.ReLU()),
        )
        self.slice3 = seq(
            (7, nn.MaxPool2d(3, stride=1)), (8, BlurDownsample(192)),
            (9, nn.Conv2d(192, 384, 3, padding=1)), (10, nn.ReLU()),
        )
        self.slice4 = seq((11, nn.Conv2d(384, 256, 3, padding=1)), (12, nn.ReLU()))
        self.slice5 = seq((13, nn.Conv2d(256, 256, 3, padding=1)), (14, nn.ReLU()))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for s in (self.slice1, self.slice2, self.slice3, self.slice4, self.slice5):
            x = s(x)
            taps.append(x)
        return taps


def normalize_channels(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Unit-normalise over channels like lpips: x / (sqrt(sum x^2) + eps)."""
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


# --------------------------------------------------------------------------------------------------
# the metric


class PerceptualDistance(nn.Module):
    """LPIPS-style distance. ``forward(a, b, spatial=False)`` with a, b float NCHW in [-1, 1].

    Returns (N, 1, 1, 1) (spatial=False: per-layer spatial mean, summed) or (N, 1, H, W) (spatial=True:
    each layer's head output bilinearly upsampled to the input size, align_corners=False, summed).
    ``b`` may have batch 1 and is then compared with every entry of ``a``.
    """

    def __init__(self, trunk: nn.Module, channels=ALEX_CHANNELS, name: str = LPIPS_ALEX):
        super().__init__()
        self.metric_name = name
        self.scaling_layer = ScalingLayer()
        self.net = trunk
        self.channels = tuple(channels)
        for i, c in enumerate(self.channels):
            self.add_module(f"lin{i}", LinearHead(c))
        self.sources: dict[str, str] = {}  # where the weights came from (for reports)

    @property
    def heads(self) -> list[LinearHead]:
        return [getattr(self, f"lin{i}") for i in range(len(self.channels))]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Channel-normalised trunk features of images in [-1, 1]; reusable with :meth:`compare`."""
        # contiguous NCHW: a permuted HWC-born view takes the channels-last kernels, ~2x slower on CPU
        return [normalize_channels(t) for t in self.net(self.scaling_layer(x.contiguous()))]

    def compare(self, fa: list[torch.Tensor], fb: list[torch.Tensor], spatial: bool = False, size=None):
        """Distance from precomputed :meth:`features`; ``size`` (H, W) is needed for spatial maps."""
        if spatial and size is None:
            raise ValueError("spatial=True needs the input size (H, W)")
        val = None
        for head, xa, xb in zip(self.heads, fa, fb):
            d = head((xa - xb) ** 2)
            if spatial:
                d = F.interpolate(d, size=tuple(size), mode="bilinear", align_corners=False)
            else:
                d = d.mean(dim=(2, 3), keepdim=True)
            val = d if val is None else val + d
        return val

    def forward(self, a: torch.Tensor, b: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        if a.ndim != 4 or b.ndim != 4 or a.shape[1] != 3 or b.shape[1] != 3:
            raise ValueError(f"expected NCHW RGB tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
        if a.shape[2:] != b.shape[2:]:
            raise ValueError(f"images differ in size: {tuple(a.shape[2:])} vs {tuple(b.shape[2:])}")
        p = next(self.parameters())
        a = a.to(device=p.device, dtype=p.dtype)
        b = b.to(device=p.device, dtype=p.dtype)
        # the two images go through the trunk separately, as lpips does (keeps float rounding identical)
        fa = self.features(a)
        fb = self.features(b)
        if fb[0].shape[0] == 1 and fa[0].shape[0] > 1:
            fb = [t.expand_as(u) for t, u in zip(fb, fa)]
        return self.compare(fa, fb, spatial=spatial, size=a.shape[2:])


# --------------------------------------------------------------------------------------------------
# weight files


def package_file(package: str, relpath: str) -> Path | None:
    """Path of a data file inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        p = Path(root) / relpath
        if p.is_file():
            return p
    try:  # fall back on the installed distribution's file list
        for name in (package, package.replace("_", "-")):
            try:
                dist = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                continue
            p = Path(dist.locate_file(f"{package}/{relpath}"))
            if p.is_file():
                return p
    except Exception:  # noqa: BLE001 - metadata quirks must not hide the clear error raised later
        pass
    return None


def load_weight_file(path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch pickle (weights_only, mapped to CPU); a file that cannot be read
    (truncated, a folder, a pickle with objects, not a dict) is :class:`UnreadableWeightsError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            # map_location matters: the lpips head files were saved from CUDA tensors
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - SafetensorError, truncated zip, refused pickle: name the file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnreadableWeightsError(f"{path}: cannot read this weight file (truncated or not a state dict?): "
                                     f"{type(exc).__name__}: {first}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise UnreadableWeightsError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _build(build, files: list[Path], *state_dicts):
    """``build(*state_dicts)``, a mismatch (missing/unexpected keys, shapes) named by its files."""
    try:
        return build(*state_dicts)
    except (KeyError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UnreadableWeightsError(f"{', '.join(map(str, files))}: not the weights this metric needs "
                                     f"({type(exc).__name__}: {first})") from None


# lpips full-model checkpoints keep the torchvision index inside their slices: net.slice2.3.weight
_LPIPS_SLICE_KEY = re.compile(r"^(?:.*\.)?slice\d+\.(\d+)\.(weight|bias)$")


def alexnet_features_state(sd: dict[str, torch.Tensor], source: str = "") -> dict[str, torch.Tensor]:
    """Pick the AlexNet conv trunk out of a state dict as ``features.N.{weight,bias}``.

    Accepts a torchvision AlexNet checkpoint (``classifier.*`` ignored), a bare ``features`` dict, prefixed
    variants (``module.``, ``net.``) and lpips-style ``net.sliceK.N.*`` keys.
    """
    out = {}
    for k, v in sd.items():
        if ".classifier." in f".{k}" or k.startswith("classifier."):
            continue
        if "features." in k:
            out[k[k.index("features.") :]] = v
            continue
        m = _LPIPS_SLICE_KEY.match(k)
        if m:
            out[f"features.{m.group(1)}.{m.group(2)}"] = v
    expected = {
        "features.0.weight": (64, 3, 11, 11), "features.3.weight": (192, 64, 5, 5),
        "features.6.weight": (384, 192, 3, 3), "features.8.weight": (256, 384, 3, 3),
        "features.10.weight": (256, 256, 3, 3),
    }
    for k, shape in expected.items():
        bk = k.replace("weight", "bias")
        if k not in out or bk not in out:
            raise ValueError(f"{source or 'backbone file'}: no AlexNet trunk tensor {k!r} / {bk!r} "
                             f"(keys start with {sorted(sd)[:4]})")
        if tuple(out[k].shape) != shape:
            raise ValueError(f"{source}: {k} has shape {tuple(out[k].shape)}, expected {shape}")
    keep = set(expected) | {k.replace("weight", "bias") for k in expected}
    return {k: out[k] for k in sorted(keep)}


AUTO = "auto"


def resolve_metric_name(name: str, weights_dir=None) -> str:
    """``auto`` -> ``lpips_alex`` when ``weights_dir`` (a release's lpips/) holds the ImageNet AlexNet
    trunk, else the offline ``stlpips_alex`` (what a starter model is trained with); other names pass."""
    if name != AUTO:
        return name
    return LPIPS_ALEX if _find_in_dir(weights_dir, BACKBONE_FILENAMES) is not None else STLPIPS_ALEX


def _find_in_dir(weights_dir, names) -> Path | None:
    if weights_dir is None:
        return None
    for n in names:
        p = Path(weights_dir) / n
        if p.is_file():
            return p
    return None


def _missing_backbone_message(searched: list[str]) -> str:
    where = "\n  ".join(searched) if searched else "(no weights_dir or backbone_path given)"
    return (
        "LPIPS (lpips_alex) needs the ImageNet AlexNet trunk, which cannot be downloaded here. Looked for:\n  "
        f"{where}\n"
        f"Get torchvision's AlexNet checkpoint (alexnet-owt-7be5be79.pth, {ALEXNET_URL}) and put it in the "
        "weights folder (or pass backbone_path=...). Only the features.* tensors are used. "
        f"Alternatively use metric '{STLPIPS_ALEX}', whose weights ship with the stlpips-pytorch wheel."
    )


def build_lpips_alex(backbone_sd: dict, heads_sd: dict, name: str = LPIPS_ALEX) -> PerceptualDistance:
    """LPIPS-alex from in-memory state dicts (trunk with torchvision names, heads with lpips names)."""
    model = PerceptualDistance(AlexNetTrunk(), ALEX_CHANNELS, name=name)
    model.net.load_state_dict(alexnet_features_state(backbone_sd), strict=True)
    heads = {k: v for k, v in heads_sd.items() if k.startswith("lin")}
    missing = [f"lin{i}.model.1.weight" for i in range(5) if f"lin{i}.model.1.weight" not in heads]
    if missing:
        raise ValueError(f"LPIPS heads are missing {missing}")
    model.load_state_dict(heads, strict=False)
    return model.eval().requires_grad_(False)


def build_stlpips_alex(sd: dict, name: str = STLPIPS_ALEX) -> PerceptualDistance:
    """ST-LPIPS-alex from the wheel's state dict (``net.sliceK.N.*``, ``lin*``, ``scaling_layer.*``)."""
    model = PerceptualDistance(ShiftTolerantAlexTrunk(), ALEX_CHANNELS, name=name)
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"shift-tolerant LPIPS weights do not match: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    return model.eval().requires_grad_(False)


def load_perceptual_metric(
    metric: str = LPIPS_ALEX,
    weights_dir=None,
    backbone_path=None,
    heads_path=None,
    device="cpu",
) -> PerceptualDistance:
    """Build a perceptual metric from local files (never downloads).

    ``lpips_alex``: trunk from ``backbone_path`` or ``weights_dir`` (one of :data:`BACKBONE_FILENAMES`),
    heads from ``heads_path``, ``weights_dir/alex.pth`` or the lpips wheel (``weights/v0.1/alex.pth``).
    ``stlpips_alex``: one file with everything, from ``backbone_path``, ``weights_dir/alex_shift_tolerant.pth``
    or the stlpips-pytorch wheel. The result is in eval mode, fp32, on ``device``; ``model.sources``
    records the files used.
    """
    env_dir = os.environ.get("INVERSE_PAINTING_LPIPS_DIR")
    if weights_dir is None and env_dir:
        weights_dir = env_dir
    if metric == LPIPS_ALEX:
        searched = []
        if backbone_path is not None:
            bb = Path(backbone_path)
            searched.append(str(bb))
            if not bb.is_file():
                raise MissingWeightsError(_missing_backbone_message(searched))
        else:
            bb = _find_in_dir(weights_dir, BACKBONE_FILENAMES)
            if weights_dir is not None:
                searched += [str(Path(weights_dir) / n) for n in BACKBONE_FILENAMES]
            if bb is None:
                raise MissingWeightsError(_missing_backbone_message(searched))
        if heads_path is not None:
            hp = Path(heads_path)
        else:
            hp = _find_in_dir(weights_dir, HEADS_FILENAMES) or package_file(*LPIPS_HEADS_IN_WHEEL)
        if hp is None or not hp.is_file():
            raise MissingWeightsError(
                f"LPIPS v0.1 linear heads not found ({hp or 'no heads_path, no alex.pth in weights_dir'}); "
                "install the lpips wheel (`pip install --no-deps lpips==0.1.4`, no torchvision needed) "
                "or pass heads_path= pointing at its weights/v0.1/alex.pth"
            )
        model = _build(build_lpips_alex, [bb, hp], load_weight_file(bb), load_weight_file(hp))
        model.sources = {"backbone": str(bb), "heads": str(hp)}
    elif metric == STLPIPS_ALEX:
        if backbone_path is not None:
            p = Path(backbone_path)
        else:
            p = _find_in_dir(weights_dir, STLPIPS_FILENAMES) or package_file(*STLPIPS_IN_WHEEL)
        if p is None or not p.is_file():
            raise MissingWeightsError(
                f"shift-tolerant LPIPS weights not found ({p or 'alex_shift_tolerant.pth'}); install them with "
                "`pip install --no-deps stlpips-pytorch==0.0.2` (the file is "
                "stlpips_pytorch/weights/vST0.0/alex_shift_tolerant.pth) or pass backbone_path="
            )
        model = _build(build_stlpips_alex, [p], load_weight_file(p))
        model.sources = {"weights": str(p)}
    else:
        raise ValueError(f"unknown perceptual metric {metric!r}; choose one of {PERCEPTUAL_METRICS}")
    return model.to(device)
