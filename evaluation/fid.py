"""Fréchet distance (FID) with a pluggable feature extractor.

* :func:`frechet_distance` -- ||mu1 - mu2||^2 + tr(S1 + S2) - 2 tr sqrt(S1 S2), with the trace of the
  matrix square root taken as sum(sqrt(eigvals(S1 S2))) (real parts, negatives from round-off clipped).
  S1 S2 is similar to the PSD matrix S1^1/2 S2 S1^1/2, so its eigenvalues are real and >= 0 in exact
  arithmetic; this is the same value as scipy's sqrtm-based trace and ~4x faster at 2048-d.
* :func:`fid_from_features` -- mean and unbiased covariance (np.cov, rowvar=False) of two feature sets.
* Extractors map uint8 HWC frames to (N, D) float64 features. :class:`InceptionFeatureExtractor` is the
  standard FID network (Inception-v3 pool3, 2048-d) in plain torch; anything else with the same call
  signature can be used (a tiny CNN in tests, :class:`TrunkFeatureExtractor` for an offline proxy).

Weight format: the **pytorch-fid** file ``pt_inception-2015-12-05-6726825d.pth`` (the TF FID Inception
ported to torch, with torchvision ``Inception3`` key names, a 1008-way ``fc`` and the FID-specific pooling
quirks: average pools exclude padding, the last block's pool branch is a max pool). We chose it because
FIDs computed with it are comparable to published FIDs; torchvision's ``inception_v3_google`` weights
are a different network and are refused. The file must be supplied locally (nothing is downloaded).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserInputError

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_NAME
)

FeatureExtractor = Callable[[Sequence[np.ndarray]], np.ndarray]


class MissingInceptionWeightsError(UserInputError, FileNotFoundError):
    """The Inception weight file FID needs is not where it was said to be."""


# ---------------------------------------------------------------------------------------------- distance


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (eigenvalue form of tr sqrt(S1 S2))."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    eig = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = float(np.sqrt(np.clip(eig.real, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid_from_features(real_features, generated_features) -> float:
    mu1, s1 = feature_statistics(real_features)
    mu2, s2 = feature_statistics(generated_features)
    return frechet_distance(mu1, s1, mu2, s2)


def compute_fid(real_frames, generated_frames, extractor: FeatureExtractor) -> float:
    """FID between two sets of uint8 HWC frames (any sizes) with the given extractor."""
    return fid_from_features(extractor(list(real_frames)), extractor(list(generated_frames)))


# ---------------------------------------------------------------------------------------------- extractors


def frames_to_tensor(frames: Sequence[np.ndarray], size=None) -> torch.Tensor:
    """uint8 HWC frames -> (N, 3, H, W) float in [0, 1]; resized (bilinear) to ``size`` when they differ."""
    out = []
    for f in frames:
        t = torch.from_numpy(np.array(f, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float() / 255.0
        if size is not None and tuple(t.shape[2:]) != tuple(size):
            t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
        out.append(t)
    return torch.cat(out)


class ModuleFeatureExtractor:
    """Wraps an ``nn.Module`` mapping (N, 3, H, W) in [0, 1] to (N, D) (or (N, D, 1, 1)) as an extractor."""

    def __init__(self, module: nn.Module, batch_size: int = 8, size=None, name: str = "custom"):
        self.module = module.eval()
        self.batch_size = batch_size
        self.size = size
        self.name = name

    @torch.no_grad()
    def __call__(self, frames) -> np.ndarray:
        feats = []
        p = next(self.module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        for i in range(0, len(frames), self.batch_size):
            size = self.size or frames[i].shape[:2]
            x = frames_to_tensor(frames[i : i + self.batch_size], size).to(device)
            feats.append(self.module(x).reshape(x.shape[0], -1).double().cpu().numpy())
        return np.concatenate(feats)


class TrunkFeatureExtractor(ModuleFeatureExtractor):
    """Offline proxy: global-average-pooled last trunk layer of a PerceptualDistance (e.g. ST-LPIPS
    AlexNet relu5, 256-d). Not comparable with published FIDs; reported under its own name."""

    def __init__(self, metric, batch_size: int = 4):
        class _Pool(nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                return self.m.net(self.m.scaling_layer(x * 2 - 1))[-1].mean(dim=(2, 3))

        super().__init__(_Pool(metric), batch_size=batch_size, name=f"{metric.metric_name}_relu5")


# ---------------------------------------------------------------------------------------------- Inception-v3


class BasicConv2d(nn.Module):
    """conv (no bias) + BatchNorm (eps 1e-3) + ReLU, key names ``conv.*`` / ``bn.*``."""

    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    # FID Inception (TF port): average pooling ignores the zero padding
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b5, b3, bp], 1)


class MixedB(nn.Module):  # grid reduction 35 -> 17
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)


class MixedC(nn.Module):  # factorised 7x7
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for k in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{k}")(bd)
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b7, bd, bp], 1)


class MixedD(nn.Module):  # grid reduction 17 -> 8
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class MixedE(nn.Module):  # expanded filter bank; ``max_pool`` selects the FID quirk of the last block
    def __init__(self, cin, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 up to the 2048-d pool3 features, FID variant (key names as pytorch-fid's file).

    Input: (N, 3, H, W) in [0, 1]; resized to 299x299 (bilinear, align_corners=False) and mapped to
    [-1, 1] inside, as pytorch-fid does. ``fc`` (1008 classes) is kept only so the file loads strictly.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = MixedA(192, 32)
        self.Mixed_5c = MixedA(256, 64)
        self.Mixed_5d = MixedA(288, 64)
        self.Mixed_6a = MixedB(288)
        self.Mixed_6b = MixedC(768, 128)
        self.Mixed_6c = MixedC(768, 160)
        self.Mixed_6d = MixedC(768, 160)
        self.Mixed_6e = MixedC(768, 192)
        self.Mixed_7a = MixedD(768)
        self.Mixed_7b = MixedE(1280, max_pool=False)
        self.Mixed_7c = MixedE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))  # pool3: (N, 2048)


def load_fid_inception(path, device="cpu") -> FIDInceptionV3:
    """FIDInceptionV3 with the pytorch-fid weights from a local file (clear error when it is missing)."""
    p = Path(path) if path else None
    if p is not None and p.is_dir():
        p = p / FID_WEIGHTS_NAME
    if p is None or not p.is_file():
        raise MissingInceptionWeightsError(
            f"FID needs the Inception weights file {FID_WEIGHTS_NAME} (pytorch-fid format), not found at "
            f"{p or '(no path given)'}. Download it elsewhere from {FID_WEIGHTS_URL} and pass its path "
            "(nothing is downloaded automatically)."
        )
    from ..models.lpips_net import UnreadableWeightsError, load_weight_file

    sd = load_weight_file(p)  # a truncated or foreign file is named, never a traceback
    if any(k.startswith("AuxLogits.") for k in sd) or ("fc.weight" in sd and sd["fc.weight"].shape[0] != 1008):
        raise UnreadableWeightsError(
            f"{p} looks like torchvision's inception_v3 weights; FID needs the pytorch-fid port "
            f"({FID_WEIGHTS_NAME}), whose features differ"
        )
    model = FIDInceptionV3()
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise UnreadableWeightsError(f"{p}: not the pytorch-fid Inception weights ({first})") from None
    return model.eval().requires_grad_(False).to(device)


class InceptionFeatureExtractor(ModuleFeatureExtractor):
    """Standard FID features (pool3, 2048-d) from a local pytorch-fid weight file."""

    def __init__(self, weights_path, device="cpu", batch_size: int = 8):
        super().__init__(load_fid_inception(weights_path, device), batch_size=batch_size, size=(299, 299),
                         name="inception_v3_pool3")
