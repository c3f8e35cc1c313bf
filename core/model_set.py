"""The set of networks one painting needs, built from a release folder.

``ModelSet.from_release(root)`` builds every network from the configs and checkpoint shapes (never from
SD1.5 constants), loads the weights strictly, and shares the one SD VAE and text encoder between the
mask generator and the renderer (the release loads three text encoders and two VAEs).
Large UNets are created on the meta device and then receive their weights (``assign=True``), so no
random initialisation is computed for nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..models.feature_encoder import CanvasFeatureEncoder
from ..models.mask_unet import MaskUNet
from ..models.next_clip import NextClipPredictor
from ..models.referencenet import ReferenceNet
from ..models.renderer_unet import RendererUNet
from ..models.time_encoder import TimeEncoder
from .clip_image import ClipImageEmbedder
from .errors import check_finite
from .imaging import tensor_to_uint8, uint8_to_tensor
from .loading import (MASK_PARTS, RENDERER_PARTS, ReleasePaths, WeightFileError, check_finite_weights, find_release,
                      load_checked, quiet_loaders, read_checkpoint, read_renderer_config, read_unet_config, require_parts,
                      unet_config_for)
from .text_encoding import TextEncoder, load_tokenizer


LAZY_PARTS = ("renderer_unet", "referencenet", "mask_unet")  # the three SD1.5-size UNets


def _load_part(what: str, folder, load):
    """``load()``, with any failure reported as a :class:`WeightFileError` naming the part and its folder."""
    try:
        return load()
    except WeightFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - diffusers/transformers raise many kinds for broken folders
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightFileError(f"{folder}: cannot load the {what} ({type(exc).__name__}: {first})") from exc


def _build_on_meta(factory):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return factory()


@dataclass
class RendererNets:
    unet: RendererUNet
    referencenet: ReferenceNet
    feature_encoder: CanvasFeatureEncoder
    next_clip: NextClipPredictor
    time_encoder: TimeEncoder
    step: int = -1


@dataclass
class MaskNets:
    unet: MaskUNet
    time_encoder: TimeEncoder
    step: int = -1


@dataclass
class ModelSet:
    vae: torch.nn.Module
    text: TextEncoder
    clip: ClipImageEmbedder
    renderer: RendererNets | None
    mask: MaskNets | None
    config: dict
    paths: ReleasePaths | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    time_dtype: torch.dtype = torch.float32  # float16 reproduces the released inference (spec B5)
    residency: object | None = None  # core.memory.Residency (or ComfyUI's ManagedModules): a memory tier
    release_referencenet: bool = False  # the tier frees the ReferenceNet once the target's banks exist
    lazy: bool = False  # the UNets' weights are read when they first run (from_release(lazy=True))

    @property
    def vae_scale(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    def modules(self) -> dict[str, torch.nn.Module]:
        mods = {"vae": self.vae, "text_encoder": self.text.encoder, "clip_vision": self.clip.vision}
        if self.renderer is not None:
            r = self.renderer
            mods.update(renderer_unet=r.unet, referencenet=r.referencenet, feature_encoder=r.feature_encoder,
                        next_clip=r.next_clip, renderer_time_encoder=r.time_encoder)
        if self.mask is not None:
            mods.update(mask_unet=self.mask.unet, mask_time_encoder=self.mask.time_encoder)
        return mods

    def to(self, device=None, dtype=None) -> "ModelSet":
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        for name, m in self.modules().items():
            unread = any(p.is_meta for p in m.parameters())  # a lazy UNet: its weights come later
            m.to(device=None if unread else device, dtype=self.time_dtype if name.endswith("time_encoder") else dtype)
        self.device, self.dtype = device, dtype
        self.text.clear()
        return self

    def attach_residency(self, residency, release_referencenet: bool = False) -> None:
        """Put every network under ``residency`` (a memory tier): each is brought to the device by a forward
        hook when it runs. The three UNets can be re-read from their checkpoints, so a tier may free them
        (``release_referencenet``: the ReferenceNet once the banks exist; on the CPU, any of them to stay
        within the tier's budget); after :meth:`from_release` with ``lazy`` they start unread."""
        for name, module in self.modules().items():
            reload = (lambda n=name: self._read_weights(n)) if name in LAZY_PARTS and self.paths else None
            residency.register(name, module, reload=reload, dropped=self.lazy and name in LAZY_PARTS)
            residency.install_hooks(name)
        self.residency, self.release_referencenet = residency, release_referencenet
        self.device = residency.device

    def _read_weights(self, name: str) -> torch.nn.Module:
        """Read one UNet's weights from its checkpoint into its (meta) module; only that part is read."""
        module, path, part = {"renderer_unet": (self.renderer and self.renderer.unet, self.paths.renderer,
                                                "unet_state_dict"),
                              "referencenet": (self.renderer and self.renderer.referencenet, self.paths.renderer,
                                               "referencenet_state_dict"),
                              "mask_unet": (self.mask and self.mask.unet, self.paths.mask_generator,
                                            "RP_state_dict")}[name]
        state = read_checkpoint(path, parts=(part,))[part]
        load_checked(module.unet, state, f"{name} ({path.name})", assign=True)
        del state
        return module.to(dtype=self.dtype).eval().requires_grad_(False)

    def target_done(self) -> None:
        """The target's banks exist: a tier that frees the ReferenceNet does it now (it runs once per target)."""
        if self.residency is not None and self.release_referencenet:
            self.residency.release("referencenet")

    @classmethod
    def from_release(cls, root, device="cpu", dtype=torch.float32, time_dtype=None,
                     renderer: bool = True, mask_generator: bool = True, lazy: bool = False) -> "ModelSet":
        """Build and load every network of the model folder ``root``; a folder that cannot be loaded raises
        :class:`WeightFileError` naming the file or part. ``lazy``: the three UNets are checked against their
        checkpoints but left without weights (meta); :meth:`attach_residency` reads each when it first runs (and
        again after a tier freed it)."""
        try:
            return cls._from_release(root, device, dtype, time_dtype, renderer, mask_generator, lazy)
        except (WeightFileError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed part (odd shapes, keys) the checks above let through
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightFileError(f"{root}: cannot load this model folder ({type(exc).__name__}: {first})") from exc

    @classmethod
    def _from_release(cls, root, device, dtype, time_dtype, renderer: bool, mask_generator: bool,
                      lazy: bool) -> "ModelSet":
        quiet_loaders()  # before the imports: transformers warns about torchvision when they run
        from diffusers import AutoencoderKL
        from transformers import CLIPImageProcessor, CLIPTextModel, CLIPVisionModel

        paths = find_release(root)
        paths.require("base", "clip", *(["renderer"] if renderer else []), *(["mask_generator"] if mask_generator else []))
        config = read_renderer_config(paths.renderer_config)
        base_unet = read_unet_config(paths.base)

        vae = _load_part("VAE", paths.base / "vae",
                         lambda: AutoencoderKL.from_pretrained(str(paths.base / "vae"), local_files_only=True))
        tokenizer = _load_part("SD tokenizer", paths.base / "tokenizer", lambda: load_tokenizer(paths.base / "tokenizer"))
        text_encoder = _load_part("SD text encoder", paths.base / "text_encoder", lambda: CLIPTextModel.from_pretrained(
            str(paths.base / "text_encoder"), local_files_only=True))
        processor = _load_part("CLIP image processor", paths.clip,
                               lambda: CLIPImageProcessor.from_pretrained(str(paths.clip), local_files_only=True))
        vision = _load_part("CLIP vision model", paths.clip,
                            lambda: CLIPVisionModel.from_pretrained(str(paths.clip), local_files_only=True))
        for what, folder, module in (("VAE", paths.base / "vae", vae), ("SD text encoder", paths.base / "text_encoder",
                                     text_encoder), ("CLIP vision model", paths.clip, vision)):
            check_finite_weights(module.state_dict(), f"{what} ({folder})")
        pe_kwargs = dict(round_to=float(config["PE_time_interval"]), max_seconds=float(config["PE_time_max"]))

        renderer_nets = None
        if renderer:
            ckpt = read_checkpoint(paths.renderer, mmap=lazy)
            require_parts(ckpt, RENDERER_PARTS, "renderer", paths.renderer)
            unet_sd = ckpt["unet_state_dict"]
            ucfg = unet_config_for(unet_sd, base_unet)
            target_input = config["target_input"]
            if ucfg["in_channels"] != 4 * (1 + target_input):  # the config and the weights must agree
                raise WeightFileError(f"{paths.renderer}: the renderer UNet takes {ucfg['in_channels']} input "
                                      f"channels, but its config says target_input: {str(target_input).lower()} "
                                      f"({4 * (1 + target_input)} channels)")
            unet = _build_on_meta(lambda: RendererUNet(ucfg, config["reference_position_encoding"], target_input))
            load_checked(unet.unet, unet_sd, f"renderer UNet ({paths.renderer.name})", assign=True)
            refnet = _build_on_meta(lambda: ReferenceNet(dict(ucfg, in_channels=4)))  # it reads the target alone
            load_checked(refnet.unet, ckpt["referencenet_state_dict"], f"ReferenceNet ({paths.renderer.name})", assign=True)
            small = {}
            for part, build in (("cur_image_guider_state_dict", CanvasFeatureEncoder.from_state_dict),
                                ("image_adpater_state_dict", NextClipPredictor.from_state_dict),
                                ("PE_state_dict", lambda sd: TimeEncoder.from_state_dict(sd, **pe_kwargs))):
                check_finite_weights(ckpt[part], f"{part} ({paths.renderer})")
                small[part] = _load_part(part, paths.renderer, lambda b=build, sd=ckpt[part]: b(sd))
            renderer_nets = RendererNets(
                unet, refnet, small["cur_image_guider_state_dict"], small["image_adpater_state_dict"],
                small["PE_state_dict"], int(ckpt.get("global_step", -1)))
            del ckpt
        mask_nets = None
        if mask_generator:
            ckpt = read_checkpoint(paths.mask_generator, mmap=lazy)
            if "RP_state_dict" not in ckpt and "unet_state_dict" in ckpt:
                raise WeightFileError(f"{paths.mask_generator} is a renderer checkpoint, not a mask-generator (RP) one")
            require_parts(ckpt, MASK_PARTS, "mask-generator (RP)", paths.mask_generator)
            rp_sd = ckpt["RP_state_dict"]
            mcfg = unet_config_for(rp_sd, base_unet)
            munet = _build_on_meta(lambda: MaskUNet(mcfg))
            load_checked(munet.unet, rp_sd, f"mask-generator UNet ({paths.mask_generator.name})", assign=True)
            check_finite_weights(ckpt["PE_state_dict"], f"PE_state_dict ({paths.mask_generator})")
            mask_nets = MaskNets(munet, _load_part("PE_state_dict", paths.mask_generator, lambda: TimeEncoder.from_state_dict(
                                     ckpt["PE_state_dict"], **pe_kwargs)),
                                 int(ckpt.get("global_step", -1)))
            del ckpt
        models = cls(vae, TextEncoder(tokenizer, text_encoder), ClipImageEmbedder(processor, vision),
                     renderer_nets, mask_nets, config, paths, time_dtype=time_dtype or dtype)
        if lazy:  # checked above; the mapped weights are let go and read again when each network first runs
            for name in LAZY_PARTS:
                if name in models.modules():
                    models.modules()[name].to("meta")
            models.lazy = True
        for m in models.modules().values():
            m.eval().requires_grad_(False)
        return models.to(device, dtype)

    @torch.no_grad()
    def encode_latents(self, image_m11: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1,1] -> scaled posterior-mean latents (deterministic; the release samples)."""
        x = image_m11.to(self.device, self.dtype).contiguous()
        return check_finite(self.vae.encode(x).latent_dist.mean * self.vae_scale, "VAE encoder")

    def image_latents(self, image: np.ndarray) -> torch.Tensor:
        """uint8 HWC image (target or canvas) -> scaled posterior-mean latents, as the renderer encodes them."""
        return self.encode_latents(uint8_to_tensor(image, scheme="centered"))

    def round_trip(self, image: np.ndarray) -> np.ndarray:
        """An image as the VAE gives it back, decode(encode(image)): uint8 HWC, same size (multiples of 8)."""
        return tensor_to_uint8(self.decode_latents(self.image_latents(image)))

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> (B,3,H,W) image in [0, 1] (clamped), float32."""
        img = check_finite(self.vae.decode(latents.to(self.dtype) / self.vae_scale).sample, "VAE decoder")
        return (img.float() / 2 + 0.5).clamp(0, 1)


def build_meta_networks(unet_config: dict, mask_in: int = 9, context_dim: int | None = None,
                        target_input: bool = False) -> dict:
    """All trainable networks on the meta device at a given UNet config (for key/shape manifests); the input
    channels of each come from its role (renderer: 4, or 8 with ``target_input``; ReferenceNet 4; mask
    generator ``mask_in``), whatever ``unet_config`` says."""
    cfg = dict(unet_config, in_channels=4)
    if context_dim is not None:
        cfg["cross_attention_dim"] = context_dim
    rcfg = dict(cfg, in_channels=4 * (1 + bool(target_input)))
    mcfg = dict(cfg, in_channels=mask_in, out_channels=1)
    return {
        "renderer_unet": _build_on_meta(lambda: RendererUNet(rcfg, target_input=bool(target_input))).unet,
        "referencenet": _build_on_meta(lambda: ReferenceNet(cfg)).unet,
        "mask_unet": _build_on_meta(lambda: MaskUNet(mcfg)).unet,
    }


