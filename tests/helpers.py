"""Plain helpers shared by the test files and by the scripts they run, importable by name.

Fixtures live in ``tests/conftest.py``, which also puts this folder on ``sys.path``. What is
here is needed where a fixture cannot go: at import time (override lists, parametrize values,
base classes), or in a driver script run in a subprocess (``robustness/_kill_driver.py``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from densessl.config.presets import build_run_config
from densessl.config.schema import RunConfig
from densessl.data.views.multicrop import MultiCropViews
from densessl.evaluation.preprocess import IMAGENET_MEAN, IMAGENET_STD
from densessl.methods.base import get_method

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"
BENCHMARKS = ROOT / "benchmarks"


# ---------------------------------------------------------------------- run configurations
#: What every small CPU run in the tests sets: no loader workers, fp32, no progress bar.
CPU = ["data.num_workers=0", "train.precision=fp32", "train.progress=false"]
#: The 2-block 64-d ViT (patch 8, from the tiny preset) of the method and trainer tests.
VIT_2X64 = ["backbone.depth=2", "backbone.embed_dim=64", "backbone.num_heads=2"]
#: The 1-block 32-d ViT of the robustness runs (the ``smoke`` presets' backbone).
VIT_1X32 = ["backbone.depth=1", "backbone.embed_dim=32", "backbone.num_heads=2"]


#: A small random-init variant of each backbone family, as overrides of a method's preset
#: (the registry-wide smoke and distributed tests run every method on each).
BACKBONE_FAMILIES = {
    "vit": [],
    "dinov2_reg": ["backbone.family=dinov2", "backbone.num_registers=4"],
    "dinov3": ["backbone.family=dinov3"],
}


def family_overrides(method: str, family: str, preset: str = "smoke") -> list[str]:
    """Overrides that put ``method``'s ``preset`` on ``family`` (``BACKBONE_FAMILIES``).

    Rotary families have no GELU choice and no position table: a preset's tanh GELU (LOCA)
    becomes the exact one, and a sin-cos table (FLSL) is turned off, as their checks ask.
    """
    extra = list(BACKBONE_FAMILIES[family])
    if family == "dinov3":
        cfg = run_config(method, preset=preset)
        if cfg.backbone.act_layer != "gelu":
            extra.append("backbone.act_layer=gelu")
        if getattr(cfg.params, "sincos_pos_embed", False):
            extra.append(f"{method}.sincos_pos_embed=false")
    return extra


def scenes(num_images: int, batch_size: int) -> list[str]:
    """Train on ``num_images`` synthetic scenes (80% of them train) in batches of ``batch_size``."""
    return [f"data.scenes_num_images={num_images}", f"data.batch_size={batch_size}"]


def head_sizes(method: str, out_dim: int, hidden_dim: int, bottleneck_dim: int) -> list[str]:
    """The sizes of a DINO-style projection head (dino, selfpatch, loca, flsl)."""
    return [
        f"{method}.out_dim={out_dim}",
        f"{method}.hidden_dim={hidden_dim}",
        f"{method}.bottleneck_dim={bottleneck_dim}",
    ]


#: The 2-step DINO run of the ``tiny_run`` fixture (tiny preset: patch 8, 64 px; shrunk to
#: 2 blocks of 64-d): seconds on a CPU.
TINY_RUN = [*scenes(64, 8), *CPU, "optim.steps=2", *VIT_2X64, *head_sizes("dino", 128, 128, 64)]

#: The robustness tests' DINO run (also their kill driver's): a 1-block ViT on 64 px scenes.
ROBUST_RUN = [
    *scenes(16, 4),
    "data.scenes_size=64",
    *CPU,
    "train.log_every=1",
    *VIT_1X32,
    *head_sizes("dino", 32, 32, 16),
    "views.global_size=32",
    "views.local_size=16",
    "views.num_local=2",
    "optim.warmup_epochs=0.5",
]

#: The "tiny preset learns on scenes" runs: the tiny recipe on 400 scenes in batches of 16,
#: logged every 10 steps.
LEARNING_RUN = [
    "data.scenes_num_images=400",
    "data.num_workers=0",
    "data.batch_size=16",
    "train.progress=false",
    "train.log_every=10",
]


def run_config(method: str, *overrides: str, preset: str = "tiny") -> RunConfig:
    """``method``'s run config: ``preset`` (a shipped preset or a YAML path), then ``overrides``."""
    return build_run_config(method, get_method(method).Params, preset, list(overrides))


def robust_config(*extra: str, method: str = "dino") -> RunConfig:
    """The robustness tests' tiny run config (``ROBUST_RUN``) with ``extra`` overrides."""
    return run_config(method, *ROBUST_RUN, *extra)


def learning_config(method: str, *extra: str) -> RunConfig:
    """The run config of a "tiny preset learns on scenes" test (``LEARNING_RUN``, ``extra``)."""
    return run_config(method, *LEARNING_RUN, *extra)


def build_method(method: str, *overrides: str, preset: str = "tiny"):
    """``(method instance, run config)`` for ``run_config(method, *overrides)``."""
    cfg = run_config(method, *overrides, preset=preset)
    return get_method(method)(cfg.params, cfg.backbone, cfg.views), cfg


# ---------------------------------------------------------------------- method inputs
def random_crops(cfg: RunConfig, batch: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """Gaussian noise crops, one ``[batch, 3, s, s]`` tensor per view of ``cfg.views``."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, s, s, generator=gen) for s in cfg.views.view_sizes()]


def view_batch(cfg: RunConfig, images: list[torch.Tensor], seed: int = 0) -> dict:
    """The multi-crop views of ``images`` (image ``i`` seeded ``seed + i``), collated."""
    views = MultiCropViews(cfg.views)
    samples = [
        views(image, torch.Generator().manual_seed(seed + i)) for i, image in enumerate(images)
    ]
    return {
        "crops": [
            torch.stack([s["crops"][v] for s in samples]) for v in range(cfg.views.num_views)
        ],
        "boxes": torch.stack([s["boxes"] for s in samples]),
        "flips": torch.stack([s["flips"] for s in samples]),
    }


# ---------------------------------------------------------------------- official DINO layout
def official_layout_shapes(embed_dim: int, depth: int, patch_size: int, img_size: int) -> dict:
    """Parameter shapes of the official DINO ViT (facebookresearch/dino
    ``vision_transformer.py``: ``qkv_bias=True``, MLP ratio 4)."""
    d, n = embed_dim, (img_size // patch_size) ** 2
    shapes = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, n + 1, d),
        "patch_embed.proj.weight": (d, 3, patch_size, patch_size),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
    }
    for i in range(depth):
        for name, shape in {
            "norm1.weight": (d,), "norm1.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,),
            "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
            "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
            "mlp.fc1.weight": (4 * d, d), "mlp.fc1.bias": (4 * d,),
            "mlp.fc2.weight": (d, 4 * d), "mlp.fc2.bias": (d,),
        }.items():  # fmt: skip
            shapes[f"blocks.{i}.{name}"] = shape
    return shapes


# ---------------------------------------------------------------------- benchmark scripts
def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the benchmarks are not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------- toy segmentation data
NUM_HUES = 4
#: Class c is drawn with hue c / 4: red, chartreuse, cyan, violet (robust to +-0.1 jitter).
HUE_PALETTE = torch.tensor(
    [[255, 0, 0], [128, 255, 0], [0, 255, 255], [128, 0, 255]], dtype=torch.uint8
)


class HueRectangles(Dataset):
    """Background (class 0) plus 3 random rectangles of classes 1-3, coloured by class
    (``HUE_PALETTE``), so an extractor can read the class off the image.

    Edges lie on the 8-px patch grid of a 32x32 image; every ``odd_every``-th image has the
    size ``odd_size`` and a grid of a quarter of it, which lands on the same 8-px grid after
    resizing to 32x32. Each image has a 3x3 block labelled 255.
    """

    num_classes = NUM_HUES
    class_names = ("background", "a", "b", "c")
    ignore_index = 255
    odd_every = 5
    odd_size = (48, 40)

    def __init__(self, n: int = 20, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        odd = self.odd_size, (self.odd_size[0] // 4, self.odd_size[1] // 4)
        self.items = []
        for i in range(n):
            is_odd = i % self.odd_every == self.odd_every - 1
            (h, w), (gy, gx) = odd if is_odd else ((32, 32), (8, 8))
            label = torch.zeros(h, w, dtype=torch.uint8)
            for _ in range(3):
                y0, x0 = torch.randint(0, 3, (2,), generator=gen).tolist()
                rh, rw = torch.randint(1, 3, (2,), generator=gen).tolist()
                cls = int(torch.randint(1, NUM_HUES, (1,), generator=gen))
                label[y0 * gy : (y0 + rh) * gy, x0 * gx : (x0 + rw) * gx] = cls
            image = HUE_PALETTE[label.long()].permute(2, 0, 1).contiguous()
            y, x = torch.randint(0, h - 3, (2,), generator=gen).tolist()
            label[y : y + 3, x : x + 3] = 255
            self.items.append({"image": image, "label": label, "index": i})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def rgb_to_hue(rgb: torch.Tensor) -> torch.Tensor:
    """Hue in [0, 1) of float RGB ``[B, 3, H, W]``."""
    r, g, b = rgb.unbind(1)
    mx, mn = rgb.max(1).values, rgb.min(1).values
    delta = (mx - mn).clamp_min(1e-6)
    hue = torch.where(
        mx == r,
        ((g - b) / delta) % 6,
        torch.where(mx == g, (b - r) / delta + 2, (r - g) / delta + 4),
    )
    return hue / 6.0


class HueOracle:
    """Patch feature = one-hot (``dim`` wide) of the majority class, decoded from the hue of
    ImageNet-normalised images of ``HueRectangles``, + small noise."""

    patch_size = 8

    def __init__(self, noise: float = 0.05, dim: int = 8) -> None:
        self.noise, self.dim = noise, dim
        self.gen = torch.Generator().manual_seed(123)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        rgb = images * std + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        hue = rgb_to_hue(rgb.clamp(0, 1))
        dist = (hue.unsqueeze(1) - torch.arange(NUM_HUES).view(1, -1, 1, 1) / NUM_HUES).abs()
        cls = torch.minimum(dist, 1 - dist).argmin(1)
        votes = F.avg_pool2d(F.one_hot(cls, NUM_HUES).permute(0, 3, 1, 2).float(), self.patch_size)
        onehot = F.one_hot(votes.argmax(1), self.dim).float()  # [B, h, w, dim]
        return onehot + self.noise * torch.randn(onehot.shape, generator=self.gen)


class RandomFeatures:
    """16-d Gaussian patch features unrelated to the image (patch 8), seeded."""

    patch_size = 8

    def __init__(self, seed: int = 7) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return torch.randn(b, h // 8, w // 8, 16, generator=self.gen)


# ---------------------------------------------------------------------- released checkpoints
def seeded_weights(shapes: dict, seed: int, scale: float = 0.05) -> dict:
    """Random tensors of ``shapes`` drawn in sorted key order (reproducible anywhere: the
    parity values pinned in tests/models/formats were computed with the official model code
    on exactly these tensors)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * scale for k, s in sorted(shapes.items())}


def released_backbone_shapes(fmt: str, embed_dim: int, depth: int, patch: int, img: int) -> dict:
    """Backbone parameter shapes of a released PyTorch checkpoint, as the official code names
    them: DINO's ViT (Leopart ``src/vit.py``), without CLS slot in ``pos_embed`` (FLSL
    ``make_vit_noclass``: ``cls_token`` kept) and without ``cls_token`` / ``norm`` (SelfPatch
    ``selfpatch_vision_transformer.py``)."""
    shapes = official_layout_shapes(embed_dim, depth, patch, img)
    if fmt in ("selfpatch", "flsl"):
        shapes["pos_embed"] = (1, (img // patch) ** 2, embed_dim)
    if fmt == "selfpatch":
        shapes = {
            k: v for k, v in shapes.items() if k not in ("cls_token", "norm.weight", "norm.bias")
        }
    return shapes


def _dino_style_file(
    path: Path, fmt: str, heads: dict, d: int, depth: int, p: int, img: int
) -> dict:
    """A DINO-style full training checkpoint (``main_selfpatch.py`` / ``main_flsl.py`` save
    dict: DDP ``module.``-prefixed student, ``backbone.`` of the MultiCropWrapper)."""
    import argparse

    shapes = released_backbone_shapes(fmt, d, depth, p, img)
    teacher, student = seeded_weights(shapes, 0), seeded_weights(shapes, 1)
    torch.save(
        {
            "student": {
                **{f"module.backbone.{k}": v for k, v in student.items()},
                **{f"module.{k}": v for k, v in heads.items()},
            },
            "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **heads},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
            "epoch": 3,
            "args": argparse.Namespace(arch="vit_small", patch_size=p, out_dim=16),
            **(
                {"flsl_loss": {"center": torch.zeros(1, 16)}, "fp16_scaler": None}
                if fmt == "flsl"
                else {}
            ),
        },
        path,
    )
    return teacher


def write_selfpatch(path: Path, d: int = 192, depth: int = 1, p: int = 16, img: int = 32) -> dict:
    """A SelfPatch training checkpoint (backbone + ``ca_head`` / ``c_head`` / ``p_head``);
    returns the teacher backbone's weights."""
    heads = {
        "ca_head.cls_token": torch.zeros(1, 1, d),
        "ca_head.cls_blocks.0.attn.q.weight": torch.ones(d, d),
        "ca_head.norm.weight": torch.ones(d),
        "c_head.last_layer.weight_g": torch.ones(16, 1),
        "p_head.mlp.0.weight": torch.ones(8, d),
    }
    return _dino_style_file(path, "selfpatch", heads, d, depth, p, img)


def write_flsl(path: Path, d: int = 192, depth: int = 1, p: int = 16, img: int = 32) -> dict:
    """An FLSL training checkpoint (CLS-free ViT + FLSL ``head.``); returns the teacher's."""
    heads = {"head.mlp.0.weight": torch.ones(8, d), "head.last_layer.weight_g": torch.ones(16, 1)}
    return _dino_style_file(path, "flsl", heads, d, depth, p, img)


def write_leopart(
    path: Path, d: int = 192, depth: int = 1, p: int = 16, img: int = 32, lightning: bool = True
) -> dict:
    """A Leopart checkpoint: PyTorch-Lightning 1.4.9's ``.ckpt`` (``state_dict`` with
    ``model.`` student and ``teacher.`` networks, ``callbacks`` keyed by the
    ``ModelCheckpoint`` class, ``AttributeDict`` hyper-parameters) or the bare state dict;
    returns the teacher backbone's weights."""
    import sys
    import types

    shapes = official_layout_shapes(d, depth, p, img)
    teacher, student = seeded_weights(shapes, 0), seeded_weights(shapes, 1)
    head = {"projection_head.0.weight": torch.ones(16, d), "prototypes.weight": torch.ones(10, 16)}
    state = {
        **{f"model.{k}": v for k, v in {**student, **head}.items()},
        **{f"teacher.{k}": v for k, v in {**teacher, **head}.items()},
    }
    if not lightning:
        torch.save(state, path)
        return teacher
    # Lightning's own classes, as the pickle names them (Lightning is not installed here).
    names = {
        "pytorch_lightning.callbacks.model_checkpoint": "ModelCheckpoint",
        "pytorch_lightning.utilities.parsing": "AttributeDict",
    }
    made = {
        name: types.ModuleType(name)
        for name in (
            "pytorch_lightning",
            "pytorch_lightning.callbacks",
            "pytorch_lightning.utilities",
        )
    }
    for module_name, cls_name in names.items():
        module = types.ModuleType(module_name)
        base = dict if cls_name == "AttributeDict" else object
        cls = type(cls_name, (base,), {"__module__": module_name})
        setattr(module, cls_name, cls)
        made[module_name] = module
    saved = {k: sys.modules.get(k) for k in made}
    sys.modules.update(made)
    try:
        checkpoint_cls = made["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint
        hparams = made["pytorch_lightning.utilities.parsing"].AttributeDict(
            arch="vit-small", patch_size=p
        )
        torch.save(
            {
                "epoch": 49,
                "global_step": 1000,
                "pytorch-lightning_version": "1.4.9",
                "state_dict": state,
                "callbacks": {
                    checkpoint_cls: {"monitor": "miou_val", "best_model_score": torch.tensor(0.5)}
                },
                "optimizer_states": [{"state": {}, "param_groups": []}],
                "lr_schedulers": [],
                "hparams_name": "kwargs",
                "hyper_parameters": hparams,
            },
            path,
        )
    finally:
        for key, module in saved.items():
            if module is None:
                sys.modules.pop(key, None)
            else:  # pragma: no cover - Lightning installed
                sys.modules[key] = module
    return teacher


def neco_network_shapes(
    version: str, d: int, depth: int, p: int, img: int, registers: int = 0
) -> dict:
    """One NeCo network as vpariza/NeCo @3932160 names it: ``v1`` (``src/models/vit.py``,
    DINO's ViT) or ``v2`` (``src/models/vit_v2.py``, DINOv2's ``DinoVisionTransformer``:
    ``register_tokens``, ``mask_token``, ``ls1/ls2.gamma``), each with its 3-layer
    ``projection_head`` (``Sequential``: Linear 0, GELU, Linear 2, GELU, Linear 4)."""
    shapes = official_layout_shapes(d, depth, p, img)
    if version == "v2":
        shapes["mask_token"] = (1, d)
        if registers:
            shapes["register_tokens"] = (1, registers, d)
        for i in range(depth):
            shapes[f"blocks.{i}.ls1.gamma"] = shapes[f"blocks.{i}.ls2.gamma"] = (d,)
    for layer, (rows, cols) in {0: (16, d), 2: (16, 16), 4: (8, 16)}.items():
        shapes[f"projection_head.{layer}.weight"] = (rows, cols)
        shapes[f"projection_head.{layer}.bias"] = (rows,)
    return shapes


def write_neco(
    path: Path,
    version: str = "v1",
    container: str = "released",
    d: int = 32,
    depth: int = 2,
    p: int = 16,
    img: int = 32,
    registers: int = 0,
    head: bool = True,
) -> dict:
    """A NeCo checkpoint: ``released`` (the README's ``neco_on_*_teacher.ckpt``: the teacher
    network's bare state dict) or ``lightning`` (what ``train_with_neco.py``'s
    ``ModelCheckpoint`` saves with Lightning 2.5: ``state_dict`` of ``model.`` student and
    ``teacher.`` networks, string-keyed ``callbacks``, plain-dict ``hyper_parameters``);
    returns the teacher network's weights (with the head unless ``head=False``)."""
    shapes = neco_network_shapes(version, d, depth, p, img, registers)
    teacher, student = seeded_weights(shapes, 0), seeded_weights(shapes, 1)
    if not head:
        teacher = {k: v for k, v in teacher.items() if not k.startswith("projection_head.")}
    if container == "released":
        torch.save(teacher, path)
        return teacher
    callback = "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0}"
    read_only = _sacred_read_only_list()  # sacred's captured config: read-only lists
    hparams = {"arch": "vit-small", "arch_version": version, "patch_size": p}
    hparams.update(sort_net="bitonic", student_steepness=100, num_register_tokens=registers)
    hparams.update(crops_for_assign=read_only([0, 1]), nmb_crops=read_only([1, 2]))
    _save_with_fake_modules(
        {
            "epoch": 24,
            "global_step": 500,
            "pytorch-lightning_version": "2.5.0.post0",
            "state_dict": {
                **{f"model.{k}": v for k, v in student.items()},
                **{f"teacher.{k}": v for k, v in teacher.items()},
            },
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {}}}},
            "callbacks": {callback: {"monitor": None, "best_model_path": ""}},
            "optimizer_states": [{"state": {}, "param_groups": []}],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": hparams,
        },
        path,
        read_only,
    )
    return teacher


_SACRED = "sacred.config.custom_containers"


def _sacred_read_only_list() -> type:
    """A stand-in for sacred 0.8.7's ``ReadOnlyList`` that pickles under sacred's name, as
    ``ReadOnlyContainer.__reduce__`` does: the class applied to a plain copy."""

    class ReadOnlyList(list):
        def __reduce__(self):
            return self.__class__, ([*self],)

    ReadOnlyList.__module__ = _SACRED
    ReadOnlyList.__qualname__ = "ReadOnlyList"
    return ReadOnlyList


def _save_with_fake_modules(obj: object, path: Path, read_only: type) -> None:
    """``torch.save`` while sacred's module path names ``read_only`` (sacred not needed)."""
    import sys
    import types

    made = {name: types.ModuleType(name) for name in ("sacred", "sacred.config", _SACRED)}
    made[_SACRED].ReadOnlyList = read_only
    saved = {k: sys.modules.get(k) for k in made}
    sys.modules.update(made)
    try:
        torch.save(obj, path)
    finally:
        for key, module in saved.items():
            if module is None:
                sys.modules.pop(key, None)
            else:  # pragma: no cover - sacred installed
                sys.modules[key] = module


def msgpack_bytes(value: object) -> bytes:
    """A minimal msgpack encoder with flax's array ext type (``flax/serialization.py``:
    ext 1 = msgpack ``[shape, dtype name, C-order bytes]``), to write Flax checkpoints
    without flax: maps, str, int, float, bool, None, lists, tensors."""
    import struct

    def size_header(n: int, small: int | None, codes: tuple[int, int, int]) -> bytes:
        if small is not None and n < 16:
            return bytes([small | n])
        if n < 0x10000:
            return bytes([codes[1]]) + struct.pack(">H", n)
        return bytes([codes[2]]) + struct.pack(">I", n)

    def enc(v: object) -> bytes:
        if v is None:
            return b"\xc0"
        if isinstance(v, bool):
            return b"\xc3" if v else b"\xc2"
        if isinstance(v, int):
            return bytes([v]) if 0 <= v < 128 else b"\xd3" + struct.pack(">q", v)
        if isinstance(v, float):
            return b"\xcb" + struct.pack(">d", v)
        if isinstance(v, str):
            raw = v.encode()
            head = bytes([0xA0 | len(raw)]) if len(raw) < 32 else b"\xd9" + bytes([len(raw)])
            return head + raw
        if isinstance(v, bytes):
            return b"\xc6" + struct.pack(">I", len(v)) + v
        if isinstance(v, torch.Tensor):
            array = v.detach().contiguous()
            name = str(array.dtype).removeprefix("torch.")
            data = array.reshape(-1).view(torch.uint8).numpy().tobytes() if array.numel() else b""
            payload = enc([list(array.shape), name, data])
            return b"\xc9" + struct.pack(">I", len(payload)) + b"\x01" + payload
        if isinstance(v, list | tuple):
            return size_header(len(v), 0x90, (0, 0xDC, 0xDD)) + b"".join(enc(x) for x in v)
        if isinstance(v, dict):
            body = b"".join(enc(k) + enc(x) for k, x in v.items())
            return size_header(len(v), 0x80, (0, 0xDE, 0xDF)) + body
        raise TypeError(type(v))

    return enc(value)


def loca_tree(
    d: int = 32, heads: int = 2, depth: int = 1, p: int = 16, grid: int = 2, seed: int = 0
) -> dict:
    """The params of scenic's ``ViT4LOCA`` (``projects/loca/vit.py``: ``ToTokenSequence_0``,
    ``encoderblock_{i}`` = ``vit.Encoder1DBlock``, ``encoder_norm``, the heads), Flax layouts:
    Conv ``[p, p, 3, D]``, Dense ``[in, out]``, attention ``[D, H, D/H]`` / ``[H, D/H, D]``."""
    h = d // heads
    shapes = {
        "ToTokenSequence_0/embedding/kernel": (p, p, 3, d),
        "ToTokenSequence_0/embedding/bias": (d,),
        "ToTokenSequence_0/posembed_input": (1, grid, grid, d),
        "encoder_norm/scale": (d,),
        "encoder_norm/bias": (d,),
        "final_norm/scale": (d,),
        "position_predictor/kernel": (d, grid * grid),
        "projection_head_for_clustering_prediction/prototypes/kernel": (8, 16),
    }
    for i in range(depth):
        b = f"encoderblock_{i}/"
        for n in ("LayerNorm_0", "LayerNorm_1"):
            shapes[b + f"{n}/scale"], shapes[b + f"{n}/bias"] = (d,), (d,)
        for n in ("query", "key", "value"):
            shapes[b + f"MultiHeadDotProductAttention_0/{n}/kernel"] = (d, heads, h)
            shapes[b + f"MultiHeadDotProductAttention_0/{n}/bias"] = (heads, h)
        shapes[b + "MultiHeadDotProductAttention_0/out/kernel"] = (heads, h, d)
        shapes[b + "MultiHeadDotProductAttention_0/out/bias"] = (d,)
        shapes[b + "MlpBlock_0/Dense_0/kernel"], shapes[b + "MlpBlock_0/Dense_0/bias"] = (
            (d, 4 * d),
            (4 * d,),
        )
        shapes[b + "MlpBlock_0/Dense_1/kernel"], shapes[b + "MlpBlock_0/Dense_1/bias"] = (
            (4 * d, d),
            (d,),
        )
    flat = seeded_weights(shapes, seed, scale=0.1)
    for key in flat:
        if key.endswith("/scale"):
            flat[key] = flat[key] + 1.0
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def write_loca(path: Path, layout: str = "zoo", **sizes: int) -> dict:
    """A LOCA Flax checkpoint: ``"zoo"`` (``{"teacher_weights": ...}``, the model-zoo files,
    scenic #1106) or ``"trainer"`` (``utils.TrainState``: ``params`` student, ``ema_params``
    teacher, ``opt_state``, ``global_step``, ...). Returns the teacher's params tree."""
    teacher, student = loca_tree(seed=0, **sizes), loca_tree(seed=1, **sizes)
    if layout == "zoo":
        state = {"teacher_weights": teacher}
    else:
        state = {
            "opt_state": {"0": {"count": torch.tensor(3, dtype=torch.int32)}},
            "ema_params": teacher,
            "params": student,
            "state": None,
            "ema_state": None,
            "global_step": 3,
            "rng": torch.zeros(2, dtype=torch.int32),
            "metadata": {"chrono": {"accum_train_time": 1.5}},
        }
    path.write_bytes(msgpack_bytes(state))
    return teacher


# ---------------------------------------------------------------------- toy videos (DAVIS)
def davis_frames(num_frames: int = 6, size: tuple[int, int] = (480, 640), seed: int = 0):
    """A tiny video in DAVIS terms: ``(frames uint8 [T, H, W, 3], masks uint8 [T, H, W])``.

    A smooth random background with pixel noise, object 1 (a textured square) moving right
    and object 2 (a disc) moving left in front of it, so 2 occludes 1 half-way. Pure numpy
    (``default_rng(seed)``), identical on every machine.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = size
    coarse = rng.uniform(40, 215, (h // 80 + 2, w // 80 + 2, 3))
    yy = np.linspace(0, coarse.shape[0] - 1.001, h)
    xx = np.linspace(0, coarse.shape[1] - 1.001, w)
    y0, x0 = yy.astype(int), xx.astype(int)
    fy, fx = (yy - y0)[:, None, None], (xx - x0)[None, :, None]
    c = coarse
    back = (
        c[y0][:, x0] * (1 - fy) * (1 - fx)
        + c[y0 + 1][:, x0] * fy * (1 - fx)
        + c[y0][:, x0 + 1] * (1 - fy) * fx
        + c[y0 + 1][:, x0 + 1] * fy * fx
    )
    ys, xs = np.mgrid[0:h, 0:w]
    frames, masks = [], []
    for t in range(num_frames):
        img = back + rng.normal(0, 6, back.shape)
        mask = np.zeros((h, w), np.uint8)
        cx1, cy1 = 120 + 60 * t, h // 2 - 40
        sq = (np.abs(xs - cx1) < 70) & (np.abs(ys - cy1) < 70)
        stripes = ((xs + ys) // 12) % 2 == 0
        img[sq] = np.where(stripes[sq, None], [230, 40, 40], [250, 200, 30])
        mask[sq] = 1
        cx2, cy2 = w - 120 - 55 * t, h // 2 + 10
        disc = (xs - cx2) ** 2 + (ys - cy2) ** 2 < 60**2
        dots = ((xs // 10) % 2 == 0) & ((ys // 10) % 2 == 0)
        img[disc] = np.where(dots[disc, None], [30, 60, 220], [40, 220, 200])
        mask[disc] = 2
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        masks.append(mask)
    return np.stack(frames), np.stack(masks)


def write_davis_fixture(
    root: Path,
    sequences: tuple[str, ...] = ("toy-a", "toy-b"),
    num_frames: int = 6,
    size: tuple[int, int] = (480, 640),
) -> Path:
    """DAVIS-2017 layout under ``root``: ``JPEGImages/480p/<seq>/%05d.jpg`` (PNG-coded, so
    that every decoder reads the same pixels), palette ``Annotations/480p/<seq>/%05d.png``
    and ``ImageSets/2017/val.txt``; sequence ``i`` is :func:`davis_frames` with seed ``i``."""
    from PIL import Image

    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9)
    for i, seq in enumerate(sequences):
        frames, masks = davis_frames(num_frames, size, seed=i)
        (root / "JPEGImages" / "480p" / seq).mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / "480p" / seq).mkdir(parents=True, exist_ok=True)
        for t, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
            Image.fromarray(frame).save(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg", "PNG")
            label = Image.fromarray(mask, mode="P")
            label.putpalette(palette)
            label.save(root / "Annotations" / "480p" / seq / f"{t:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("".join(s + "\n" for s in sequences))
    return root


class PatchStatsModel(torch.nn.Module):
    """A fixed, training-free "backbone" for parity runs: per 16-px patch the mean and std
    of each channel (6 numbers) through a seeded random 6 -> 32 map and tanh.

    ``forward(images) -> [B, h, w, 32]`` is densessl's extractor contract;
    ``get_intermediate_layers(x, n=1)`` returns ``[[B, 1 + h*w, 32]]`` with a zero CLS
    token first, as DINO's ViT, so the official scripts can run it unchanged."""

    patch_size = 16

    def __init__(self, dim: int = 32, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(6, dim, generator=gen, dtype=torch.float64))
        self.patch_embed = type("PatchEmbed", (), {"patch_size": 16})()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.double()
        mean = F.avg_pool2d(x, 16)
        std = (F.avg_pool2d(x * x, 16) - mean * mean).clamp_min(0).sqrt()
        stats = torch.cat([mean, std], 1).permute(0, 2, 3, 1)
        return torch.tanh(stats @ self.weight).float()

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        feats = self.forward(x)
        b, h, w, d = feats.shape
        tokens = torch.cat([feats.new_zeros(b, 1, d), feats.reshape(b, h * w, d)], 1)
        return [tokens]


# ---------------------------------------------------------------------- toy keypoint pairs (SPair)
def write_spair_fixture(root: Path, pairs: int = 2) -> Path:
    """SPair-71k layout under ``root``: ``pairs`` pairs of category ``cat`` (48x64 images, 2
    keypoints each, target box (5, 6, 45, 40)), listed in ``ImagePairs/test.txt``."""
    import json

    import numpy as np
    from PIL import Image

    (root / "JPEGImages" / "cat").mkdir(parents=True)
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    (root / "ImagePairs").mkdir()
    names = []
    for i in range(pairs):
        for stem in (f"s{i}", f"t{i}"):
            Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(
                root / "JPEGImages" / "cat" / f"{stem}.jpg"
            )
        name = f"{i:06d}-s{i}-t{i}:cat"
        ann = {
            "src_imname": f"s{i}.jpg",
            "trg_imname": f"t{i}.jpg",
            "category": "cat",
            "src_kps": [[10, 12], [30, 20]],
            "trg_kps": [[12, 14], [33, 25]],
            "trg_bndbox": [5, 6, 45, 40],
            "src_imsize": [64, 48, 3],
            "trg_imsize": [64, 48, 3],
            "viewpoint_variation": 1,
        }
        (root / "PairAnnotation" / "test" / f"{name}.json").write_text(json.dumps(ann))
        names.append(name)
    (root / "ImagePairs" / "test.txt").write_text("\n".join(names) + "\n")
    return root
