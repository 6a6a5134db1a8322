"""The depth track's data written as a user would bring it: a data spec over GQA-layout question files whose depth
questions name a depth map in a column, so ``safe train --modality depth`` / ``safe policy train`` run on it as on
any user's data, and their figures can be set beside the depth track's (same scenes, questions and splits).

``python -m safe.bench.depth_export OUT`` writes, per split (train, retention, test)::

    OUT/<split>_balanced_questions.json   GQA's layout; a depth question's object names its map in "depth_file"
    OUT/images/<id>.jpg                    the RGB scene (JPEG at quality 100, no chroma subsampling)
    OUT/depth/<id>.npy                     the depth map in metres (depth questions only)
    OUT/spec.yaml                          the data spec over the three splits

The VL questions carry no map (in the depth track they carry their own scene's, which does not bear on them):
here they are the rows ``safe train`` pairs with an unrelated map, as the data spec documents.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from safe.bench.depth import DEPTH_FAMILIES, DepthSplits, depth_split
from safe.bench.questions import SynthConfig

SPLITS = ("train", "retention", "test")


def export_depth_spec(out: str | Path, splits: DepthSplits | None = None, scene: SynthConfig | None = None) -> Path:
    """Write the depth track's splits under ``out`` (module docstring); returns the spec file."""
    out = Path(out)
    splits, scene = splits or DepthSplits(), scene or SynthConfig()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(exist_ok=True)
    spec: dict = {"seed": splits.seed}
    for split in SPLITS:
        examples, pictures, maps = depth_split(scene, splits, split)
        questions = {}
        for e, picture, depth in zip(examples, pictures, maps):
            stem = e.id.rsplit("-", 1)[-1]
            picture.convert("RGB").save(out / "images" / f"{stem}.jpg", quality=100, subsampling=0)
            q = {"imageId": stem, "question": e.question, "answer": e.answer, "types": {"detailed": e.family}}
            if e.family in DEPTH_FAMILIES:
                np.save(out / "depth" / f"{stem}.npy", depth.astype(np.float32))
                q["depth_file"] = f"{stem}.npy"
            questions[stem] = q
        (out / f"{split}_balanced_questions.json").write_text(json.dumps(questions))
        source = {"reader": "gqa", "root": ".", "split": split}  # images/ is GQA's default image folder
        if split != "retention":  # the retention split holds VL questions only: no map to name
            source["modalities"] = {"depth": {"column": "depth_file", "dir": "depth"}}
        spec[split] = [source]
    path = out / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


if __name__ == "__main__":
    import sys

    print(export_depth_spec(sys.argv[1] if len(sys.argv) > 1 else "runs/depth-spec-data"))
