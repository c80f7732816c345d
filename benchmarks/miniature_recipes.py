"""The recipes of the miniature base (``benchmarks/miniature_base.py --recipe NAME``).

A recipe is DINO's ``tiny`` preset plus overrides: scenes, augmentation, budget. Recipes are
chosen from DINO's and the supervised row's numbers only (issue #31); what each tested and
what it measured is in ``results/miniature/findings.md``. A recipe is never edited once it
has run: its fields are hashed into its cache folder's name (``recipe_folder``), so a new idea
is a new recipe.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """DINO tiny preset + ``overrides``; ``note`` says what the recipe tests."""

    note: str
    steps: int
    overrides: tuple[str, ...] = ()
    batch_size: int = 16
    scenes_class_set: str = "distinct-cues"
    scenes_size: int = 96
    eval_every: int = 1000
    #: DINO's warm-up and last-layer freeze are in epochs; a recipe fixes them in steps (the
    #: quality table's 1 epoch of its 2000 scenes = 100 steps of batch 16), so that a run on
    #: fresh scenes (an epoch of 50,000 steps) warms up as fast.
    warmup_steps: int = 100
    freeze_steps: int = 100


#: The quality table's DINO row, as a starting point (2000 scenes, mild colour jitter).
_TABLE = ("data.scenes_num_images=2000",)
#: Never the same scene twice in a run (scenes are rendered on the fly from their index).
_FRESH = ("data.scenes_num_images=1000000",)
#: Colour is drawn at random per instance, so it names an instance, never a class: a view's
#: hue is turned anywhere on the wheel, saturation and brightness jittered, 20 % grayscale.
_COLOUR = (
    "views.photometric.jitter_prob=0.8",
    "views.photometric.hue=0.5",
    "views.photometric.saturation=0.6",
    "views.photometric.grayscale_prob=0.2",
)

#: The same colour randomisation on the local crops only (student views); the teacher's global
#: views keep the tiny preset's mild jitter, so its targets stay consistent across views.
_LOCAL_COLOUR = (
    "views.local_photometric.jitter_prob=1.0",
    "views.local_photometric.hue=0.5",
    "views.local_photometric.saturation=0.6",
    "views.local_photometric.grayscale_prob=0.2",
    "views.local_photometric.blur_prob=[0.5,0.1,0.2]",
    "views.local_photometric.blur_sigma=[0.1,1.0]",
)

#: 1-3 larger objects (radius 0.2-0.4 of the side; the defaults are 1-5 of 0.12-0.28).
_BIG = ("data.scenes_objects=[1,3]", "data.scenes_radius=[0.2,0.4]")

RECIPES: dict[str, Recipe] = {
    "table": Recipe("the quality table's DINO recipe, 3000 steps", 3000, _TABLE),
    "fresh": Recipe("fresh scenes every step", 3000, _FRESH),
    "fresh-colour": Recipe("fresh scenes + colour randomised per view", 3000, _FRESH + _COLOUR),
    "fresh-localcolour": Recipe(
        "fresh scenes + colour randomised on the local crops only", 3000, _FRESH + _LOCAL_COLOUR
    ),
    "fresh-localcolour-6": Recipe(
        "fresh-localcolour with 6 local crops (DINO uses 8); the first long-run attempt, "
        "40,000 steps, was stopped at step 320 (teacher mutual information 1.03 -> 0.29)",
        3000,
        _FRESH + _LOCAL_COLOUR + ("views.num_local=6",),
    ),
    "fresh-localcolour-big": Recipe(
        "fresh-localcolour with 1-3 larger objects (radius 0.2-0.4 of the side)",
        3000,
        _FRESH + _LOCAL_COLOUR + ("data.scenes_objects=[1,3]", "data.scenes_radius=[0.2,0.4]"),
    ),
    "fresh-localcolour-lr5": Recipe(
        "fresh-localcolour with 5x the tiny preset's learning rate (5e-4)",
        3000,
        _FRESH + _LOCAL_COLOUR + ("optim.lr=5e-4",),
    ),
    "base": Recipe(
        "the long run: fresh scenes, colour randomised on the 2 local crops, 40,000 steps",
        40000,
        _FRESH + _LOCAL_COLOUR,
        eval_every=2500,
    ),
    "base-big": Recipe(
        "the long run on larger objects: fresh-localcolour-big on a 40,000-step schedule",
        40000,
        _FRESH + _LOCAL_COLOUR + ("data.scenes_objects=[1,3]", "data.scenes_radius=[0.2,0.4]"),
        eval_every=2500,
    ),
    "base-big-wide": Recipe(
        "base-big with its 2 colour-randomised local crops as wide as the global ones (64 px, "
        "area 0.4-1): the student must match the teacher's scene without colour from a crop "
        "that holds most of the scene, not from a 32-px piece of it",
        40000,
        _FRESH
        + _LOCAL_COLOUR
        + ("data.scenes_objects=[1,3]", "data.scenes_radius=[0.2,0.4]")
        + ("views.local_size=64", "views.local_scale=[0.4,1.0]"),
        eval_every=2500,
    ),
    "gray-big": Recipe(
        "fresh-localcolour-big in gray scenes (data.scenes_colours=gray): no hue anywhere, so "
        "an instance is named only by its two gray levels, texture and shape",
        4000,
        _FRESH + _LOCAL_COLOUR + _BIG + ("data.scenes_colours=gray",),
    ),
    "palette-big": Recipe(
        "fresh-localcolour-big with every colour drawn from eight shared ones "
        "(data.scenes_colours=palette): the same colours recur in every scene and class",
        4000,
        _FRESH + _LOCAL_COLOUR + _BIG + ("data.scenes_colours=palette",),
    ),
    "base-gray": Recipe(
        "the base: gray-big on a 12,000-step schedule (192,000 fresh scenes)",
        12000,
        _FRESH + _LOCAL_COLOUR + _BIG + ("data.scenes_colours=gray",),
        eval_every=2000,
    ),
    "fresh-colour-t02": Recipe(
        "fresh-colour with a sharper teacher (0.02)",
        3000,
        _FRESH + _COLOUR + ("dino.teacher_temp=0.02", "dino.warmup_teacher_temp=0.02"),
    ),
    "fresh-colour-t01": Recipe(
        "fresh-colour with a teacher at 0.01",
        3000,
        _FRESH + _COLOUR + ("dino.teacher_temp=0.01", "dino.warmup_teacher_temp=0.01"),
    ),
    "fresh-colour-fast": Recipe(
        "fresh-colour with lr 3e-4 and teacher EMA 0.99",
        3000,
        _FRESH + _COLOUR + ("optim.lr=3e-4", "optim.momentum_teacher=0.99"),
    ),
}
