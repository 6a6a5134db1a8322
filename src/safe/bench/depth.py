"""The depth track of the built-in benchmark: the same scenes with a depth map, and questions only depth answers.

Every object of a scene stands at its own depth (metres from the camera, distinct per object, at least
:data:`MIN_GAP` apart); the depth map is the scene's silhouettes filled with their depths over a far
background. The picture itself is the unchanged RGB scene (all objects drawn the same size), so nothing
in it says which object is nearer: the depth families are answerable from the depth map alone.

* ``nearest_shape`` ("which shape is nearest?"): two or three objects of different shapes -> a shape.
* ``farthest_colour`` ("what colour is the farthest object?"): two or three objects of different
  colours -> a colour.
* ``behind_shape`` ("what shape is behind the red square?"): three objects of different shapes and
  colours; the named one stands in the middle, the answer is the shape of the one behind it (a depth-
  blind model can do no better than picking one of the other two).

VL rows are the built-in VL families (colour, shape, count, position) with their own scene's depth map
attached, which does not bear on the question. Answers reuse the built-in base's words (shapes,
colours); question words outside its vocabulary read as its unknown token, and each family's token
sequence still differs from every other family's. Everything is a pure function of
``(seed, split, index)``, as in :mod:`safe.bench.questions`.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from safe.bench.questions import VL_FAMILIES, SynthConfig, _build, _family_targets, _spread
from safe.bench.scenes import COLOUR_NAMES, SHAPES, place_objects, render_scene
from safe.data.records import Example

DEPTH_FAMILIES: tuple[str, ...] = ("nearest_shape", "farthest_colour", "behind_shape")
DEPTH_TEMPLATES = {"nearest_shape": "which shape is nearest?",
                   "farthest_colour": "what colour is the farthest object?",
                   "behind_shape": "what shape is behind the {colour} {shape}?"}
NEAR, FAR, BACKGROUND_DEPTH, MIN_GAP = 1.0, 4.0, 6.0, 0.6
"""Objects stand between NEAR and FAR metres, at least MIN_GAP apart; the background is at BACKGROUND_DEPTH."""
TASK = "synth-depth"
SHIPPED_DEPTH_ENCODER = Path(__file__).resolve().parent / "pretrained" / "depth_encoder"
"""The shipped depth encoder (a transformers ViTModel) and its image processor."""


@dataclass(frozen=True)
class DepthSplits:
    """Sizes of the depth track's splits and its VL share (the scenes follow ``scene``)."""

    n_train: int = 6000
    n_retention: int = 400
    n_test: int = 900
    vl_share: float = 0.4
    seed: int = 0

    @classmethod
    def tiny(cls) -> DepthSplits:
        return cls(n_train=96, n_retention=16, n_test=48)

    def size(self, split: str) -> int:
        return {"train": self.n_train, "retention": self.n_retention, "test": self.n_test}[split]


def distinct_depths(rng: np.random.Generator, n: int) -> list[float]:
    """``n`` depths in [NEAR, FAR], pairwise at least MIN_GAP apart, in random order."""
    while True:
        d = np.round(rng.uniform(NEAR, FAR, size=n), 2)
        if n < 2 or np.min(np.diff(np.sort(d))) >= MIN_GAP:
            return [float(x) for x in d]


def render_depth(objects: list[dict[str, Any]], image_size: int = 48, grid: int = 3) -> np.ndarray:
    """(image_size, image_size) float32 depth map: each object's silhouette (as :func:`render_scene`
    draws it) at its ``depth``, nearer objects drawn last, the rest at BACKGROUND_DEPTH."""
    out = np.full((image_size, image_size), BACKGROUND_DEPTH, dtype=np.float32)
    empty = np.asarray(render_scene([], image_size, grid))
    for o in sorted(objects, key=lambda o: -o["depth"]):
        out[(np.asarray(render_scene([o], image_size, grid)) != empty).any(axis=2)] = o["depth"]
    return out


def depth_pixels(depth: np.ndarray) -> np.ndarray:
    """A depth map as the depth encoder's one-channel input: nearness in [-1, 1] (near bright). The same
    affine map as :func:`depth_processor`'s rescale and normalise (used for the encoder's pretraining)."""
    return ((BACKGROUND_DEPTH - depth) / (BACKGROUND_DEPTH - NEAR) * 2.0 - 1.0).astype(np.float32)[None]


def depth_processor(image_size: int = 48):
    """The depth encoder's transformers image processor: depth in metres -> nearness in [-1, 1], as
    :func:`depth_pixels` (rescale by -2 / (BACKGROUND_DEPTH - NEAR), then subtract the mean)."""
    from transformers import ViTImageProcessorPil

    scale = 2.0 / (BACKGROUND_DEPTH - NEAR)
    return ViTImageProcessorPil(do_resize=False, do_rescale=True, rescale_factor=-scale, do_normalize=True,
                                image_mean=[-(scale * BACKGROUND_DEPTH - 1.0)], image_std=[1.0],
                                size={"height": image_size, "width": image_size})


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"depth-{split}".encode()), index])


def _plan(splits: DepthSplits, split: str) -> list[tuple[str, Any]]:
    n = splits.size(split)
    n_vl = n if split == "retention" else int(round(n * splits.vl_share))
    counts = _spread(n_vl, VL_FAMILIES)
    if split != "retention":
        counts.update(_spread(n - n_vl, DEPTH_FAMILIES))
    rng = np.random.default_rng([splits.seed, zlib.crc32(f"depth-plan-{split}".encode())])
    targets = {**{f: _family_targets(f, ()) for f in VL_FAMILIES},
               "nearest_shape": SHAPES, "farthest_colour": COLOUR_NAMES, "behind_shape": SHAPES}
    plan = [(f, targets[f][j % len(targets[f])]) for f, m in counts.items() for j in range(m)]
    return [plan[i] for i in rng.permutation(len(plan))]


def _depth_question(scene: SynthConfig, family: str, target: Any, rng: np.random.Generator):
    if family == "nearest_shape":
        k = int(rng.integers(2, 4))
        shapes = [str(target)] + [str(s) for s in rng.permutation([s for s in SHAPES if s != target])][: k - 1]
        colours = [COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))] for _ in range(k)]
        depths = sorted(distinct_depths(rng, k))  # the target (first) gets the smallest depth
        objects = place_objects(rng, scene, list(zip(shapes, colours)))
        return DEPTH_TEMPLATES[family], str(target), objects, depths
    if family == "farthest_colour":
        k = int(rng.integers(2, 4))
        colours = [str(target)] + [str(c) for c in rng.permutation([c for c in COLOUR_NAMES if c != target])][: k - 1]
        shapes = [SHAPES[int(rng.integers(len(SHAPES)))] for _ in range(k)]
        depths = sorted(distinct_depths(rng, k), reverse=True)  # the target gets the largest depth
        objects = place_objects(rng, scene, list(zip(shapes, colours)))
        return DEPTH_TEMPLATES[family], str(target), objects, depths
    # behind_shape: named object in the middle, the target behind it, the third in front of it
    others = [str(s) for s in rng.permutation([s for s in SHAPES if s != target])]
    shapes = [str(target), others[0], others[1]]  # behind, named (middle), front
    colours = [str(c) for c in rng.permutation(COLOUR_NAMES)[:3]]
    near, mid, far = sorted(distinct_depths(rng, 3))
    objects = place_objects(rng, scene, list(zip(shapes, colours)))
    question = DEPTH_TEMPLATES[family].format(colour=colours[1], shape=shapes[1])
    return question, str(target), objects, [far, mid, near]


def make_depth_example(scene: SynthConfig, splits: DepthSplits, split: str, index: int,
                       plan: list | None = None) -> tuple[Example, Image.Image, np.ndarray]:
    """(record, RGB picture, depth map in metres) of example ``index`` of ``split``."""
    plan = plan if plan is not None else _plan(splits, split)
    family, target = plan[index]
    rng = _rng(splits.seed, split, index)
    if family in DEPTH_FAMILIES:
        question, answer, objects, depths = _depth_question(scene, family, target, rng)
    else:
        question, answer, objects, _, _ = _build(scene, "train" if split == "retention" else split, family, target, rng)
        depths = distinct_depths(rng, len(objects))
    objects = [{**o, "depth": d} for o, d in zip(objects, depths)]
    objects = sorted(objects, key=lambda o: (o["row"], o["col"]))
    stem = f"{split}_{index:06d}"
    ex = Example(id=f"{TASK}-{stem}", task=TASK, family=family, question=question, answers=(answer,),
                 image=None, audio=None, needs_audio=family in DEPTH_FAMILIES,
                 meta={"split": split, "index": index, "objects": objects, "modality": "depth"})
    return ex, render_scene(objects, scene.image_size, scene.grid), render_depth(objects, scene.image_size, scene.grid)


def load_depth_processor(path: str | Path | None = None):
    """The depth encoder's image processor as a modality front end (depth maps in metres -> pixel_values)."""
    from safe.processing.modalities import ImageModalityFrontEnd

    return ImageModalityFrontEnd.from_pretrained(path or SHIPPED_DEPTH_ENCODER)


def depth_split(scene: SynthConfig, splits: DepthSplits, split: str):
    """(examples, RGB pictures, depth maps (n, H, W) in metres) of a whole split, in memory."""
    plan = _plan(splits, split)
    rows = [make_depth_example(scene, splits, split, i, plan) for i in range(len(plan))]
    return [r[0] for r in rows], [r[1] for r in rows], np.stack([r[2] for r in rows])
