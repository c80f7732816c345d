"""Long ``--help`` texts of the commands (examples and tuning advice), kept apart from the
parser so that :mod:`densessl.cli.parser` reads as the list of commands."""

PRETRAIN_HELP = """\
Pretrain a ViT with a dense self-supervised method.

Examples:
  densessl pretrain --method dino --preset tiny --out runs/dino-tiny
  densessl pretrain --method dino --data ~/images --preset paper --epochs 100 --out runs/dino \\
      optim.lr=0.0005 dino.out_dim=65536

Overrides are key=value pairs over the preset (sections: backbone, views, data, optim, train
and the method's own, e.g. dino.out_dim). Running again with the same --out resumes exactly.
Tuning advice (watch metrics.jsonl): if the loss climbs back towards ln(dino.out_dim) and
teacher_entropy nears it too, the teacher has gone uniform — lower optim.lr, weaken colour
augmentation (views.photometric.*) or lower dino.teacher_temp; if teacher_batch_entropy
falls far below ln(out_dim), few prototypes are used (one-hot collapse) — raise
dino.teacher_temp. On small datasets a smaller dino.out_dim (1k-8k) is enough.

Exit status: 0 done; 2 an error, explained (densessl: error: ...); 130 (SIGINT, Ctrl-C) or 143
(SIGTERM, sent by SLURM, Docker, Kubernetes): stopped at the next step with a checkpoint; the same
command resumes. SLURM: #SBATCH --signal=TERM@120 sends it ahead of the time limit.
"""

EVAL_HELP = """\
Evaluate a frozen backbone's patch features with one dense protocol; prints a table with the
protocol's settings next to every number and writes all of it as JSON (with the official
code each protocol follows).

Protocols (`densessl eval PROTOCOL --help` lists each one's settings and advice):
{protocols}

Examples:
  densessl eval linear --backbone runs/dino-tiny                  # scenes, CPU preset
  densessl eval cluster --backbone runs/dino-tiny data.num_images=400 seeds=[0,1]
  densessl eval retrieval --backbone dino_deitsmall16_pretrain.pth --arch vit_small \\
      --patch-size 16 --dataset voc --root data/VOCdevkit --out voc_hbird.json
  densessl eval cluster --backbone random:runs/dino-tiny          # baseline: same ViT, random
  densessl eval unsupervised --backbone runs/leopart-tiny community=leiden

--backbone: a run directory (EMA teacher of checkpoints/last.pt; --which student), a
densessl or official DINO / DINOv2 / DINOv3 checkpoint file (family, registers and size
inferred), a timm-layout .pth or .safetensors, a released SelfPatch / Leopart / LOCA (Flax) /
FLSL / NeCo checkpoint (format detected, or --format NAME), an exported backbone (.safetensors +
meta.json), timm:NAME with --weights FILE, or random:ARCH / random:RUN_DIR. Settings override
by name (epochs=10, num_clusters=[C,100], memory_size=null); dataset options under data.
(data.num_images=200 for scenes). On scenes the CPU presets are used; real datasets get
the papers' settings, which want a GPU (448-512 px inputs). Without --out, a run
directory's results go to RUN/eval/<protocol>_<dataset>.json.
"""

VIZ_HELP = """\
Draw dense features: one PNG panel per image with the input, the PCA of the patch features
as RGB (fitted jointly over all images, so colours compare across pictures), a k-means
cluster overlay and the CLS attention of the last block (mean and per head; backbones
without a CLS token have none).

Examples:
  densessl viz --backbone runs/dino-tiny --images data/scenes/images --out runs/dino-tiny/viz
  densessl viz --backbone dino_deitsmall16_pretrain.pth --images photos/ --out viz \\
      --size 448 --clusters 8 --mask-background

--backbone takes what `densessl eval` takes (run directory, checkpoint, export folder,
timm:NAME with --weights, random:ARCH). Advice: --size 224-480 (finer maps cost
quadratically more); --clusters a little above the number of object kinds;
--mask-background helps on object-centric photos of a well-trained backbone (the first
principal component separates objects from background; border patches decide which side
is background; raise --threshold to keep only confident foreground).
"""

EXPORT_HELP = """\
Export a trained backbone (the EMA teacher of a run) as timm-format model.safetensors plus
meta.json (timm architecture name and create_model kwargs, method, steps, versions) and
timm's config.json. Plain timm loads it without densessl:

  meta = json.load(open("EXPORT/meta.json"))
  model = timm.create_model(meta["architecture"], pretrained=True,
      pretrained_cfg_overlay=dict(file="EXPORT/model.safetensors"), **meta["timm_kwargs"])

The source may also be a densessl checkpoint, an official DINO / DINOv2 / DINOv3 checkpoint
or a released SelfPatch / Leopart / LOCA (Flax) / FLSL / NeCo checkpoint (format detected,
or --format NAME); DINOv2 exports as timm's vit_*_patch14_dinov2, DINOv3 as vit_*_dinov3_qkvb.
The export is checked after writing: plain timm must give the same patch features.
`densessl eval --backbone EXPORT` and `densessl viz --backbone EXPORT` read it back.
"""
