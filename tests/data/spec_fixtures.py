"""Tiny datasets written in each published layout, at the default paths of the data spec
(:data:`safe.data.spec.LAYOUTS`), for the spec and end-to-end tests. Images are small JPEGs of one colour,
clips 0.5 s tones whose pitch follows the answer, so every file is a real, decodable medium."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from safe.processing.audio import write_wav

COLOURS = {"red": (200, 20, 20), "green": (20, 180, 40), "blue": (30, 40, 200), "yellow": (220, 210, 30)}
SOUNDS = {"dog": 300.0, "bell": 900.0, "drum": 120.0, "flute": 1500.0}


def jpg(path: Path, colour=(200, 20, 20), size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, "JPEG")
    return path


def wav(path: Path, hz: float = 440.0, seconds: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    write_wav(path, 0.4 * np.sin(2 * np.pi * hz * t), 16000)
    return path


def _json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _csv(path: Path, rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def _pick(d: dict, i: int):
    k = list(d)[i % len(d)]
    return k, d[k]


def write_vqav2(root: Path, subtype: str = "val2014", n: int = 6, start: int = 1) -> Path:
    qs, anns = [], []
    for i in range(start, start + n):
        name, rgb = _pick(COLOURS, i)
        jpg(root / subtype / f"COCO_{subtype}_{i:012d}.jpg", rgb)
        ten = [name] * 8 + ["dark " + name, "maroon"]
        qs.append({"image_id": i, "question": "what colour is the picture", "question_id": i * 10})
        anns.append({"question_id": i * 10, "image_id": i, "answers": [{"answer": a, "answer_id": k + 1}
                                                                       for k, a in enumerate(ten)],
                     "multiple_choice_answer": name, "question_type": "what color is", "answer_type": "other"})
    _json(root / f"v2_OpenEnded_mscoco_{subtype}_questions.json", {"data_subtype": subtype, "questions": qs})
    _json(root / f"v2_mscoco_{subtype}_annotations.json", {"annotations": anns})
    return root


def write_gqa(root: Path, split: str = "testdev", n: int = 6) -> Path:
    data = {}
    for i in range(n):
        name, rgb = _pick(COLOURS, i + 1)
        jpg(root / "images" / f"n{i}.jpg", rgb)
        data[f"{split}{i}"] = {"imageId": f"n{i}", "question": "which colour is the picture", "answer": name,
                               "fullAnswer": f"the picture is {name}", "types": {"structural": "query",
                                                                                 "semantic": "attr",
                                                                                 "detailed": "colour"}}
    _json(root / f"{split}_balanced_questions.json", data)
    return root


def write_avqa(root: Path, split: str = "train", n: int = 6) -> Path:
    rows = []
    for i in range(n):
        sound, hz = _pick(SOUNDS, i)
        video = f"vid{split}{i}_000030"
        jpg(root / "frames" / video / "0001.jpg", _pick(COLOURS, i)[1])
        wav(root / "audio" / f"{video}.wav", hz)
        choices = list(SOUNDS)
        rows.append({"id": i, "video_id": 100 + i, "video_name": video, "question_text": "what is making the sound",
                     "multi_choice": choices, "answer": choices.index(sound), "question_type": "Come From",
                     "question_relation": "Both"})
    _json(root / f"{split}_qa.json", rows)
    return root


def write_music_avqa(root: Path, split: str = "test", n: int = 6) -> Path:
    rows = []
    for i in range(n):
        sound, hz = _pick(SOUNDS, i)
        video = f"{split}{i:05d}"
        jpg(root / "frames" / f"{video}.jpg", _pick(COLOURS, i)[1])
        wav(root / "audio" / f"{video}.wav", hz)
        visual = i % 3 == 2
        rows.append({"video_id": video, "question_id": i,
                     "type": json.dumps(["Visual", "Counting"] if visual else ["Audio", "Counting"]),
                     "question_content": "which <Object> is sounding" if not visual else "what colour is the <Object>",
                     "templ_values": json.dumps(["instrument"]),
                     "anser": sound if not visual else _pick(COLOURS, i)[0]})
    _json(root / f"avqa-{split}.json", rows)
    return root


def write_audiocaps(root: Path, split: str = "train", n: int = 6) -> Path:
    rows = [["audiocap_id", "youtube_id", "start_time", "caption"]]
    for i in range(n):
        sound, hz = _pick(SOUNDS, i)
        ytid = f"yt{split}{i}"
        wav(root / "audio" / f"{ytid}_30.wav", hz)
        rows.append([str(1000 + i), ytid, "30", f"a {sound} sounds"])
    _csv(root / f"{split}.csv", rows)
    return root


def write_clotho(root: Path, split: str = "evaluation", n: int = 4) -> Path:
    rows = [["file_name", *(f"caption_{k}" for k in range(1, 6))]]
    for i in range(n):
        sound, hz = _pick(SOUNDS, i)
        wav(root / f"clotho_audio_{split}" / f"clip {i}.wav", hz)
        rows.append([f"clip {i}.wav", *([f"a {sound} sounds"] * 4 + [f"the {sound} sounds"])])
    _csv(root / f"clotho_captions_{split}.csv", rows)
    return root


def write_vggsound(root: Path, n: int = 8) -> Path:
    rows = []
    for i in range(n):
        sound, hz = _pick(SOUNDS, i)
        ytid = f"vgg{i}"
        wav(root / "audio" / f"{ytid}_{i:06d}.wav", hz)
        rows.append([ytid, str(i), sound, "test" if i % 2 else "train"])
    _csv(root / "vggsound.csv", rows)
    return root


def write_all(root: Path) -> dict[str, Path]:
    """Every dataset under ``root/<name>`` (several splits where the spec tests use them)."""
    out = {"vqav2": write_vqav2(root / "vqav2", "train2014", n=8),
           "gqa": write_gqa(root / "gqa", "testdev", n=6),
           "avqa": write_avqa(root / "avqa", "train", n=8),
           "music_avqa": write_music_avqa(root / "music_avqa", "test", n=6),
           "audiocaps": write_audiocaps(root / "audiocaps", "train", n=8),
           "clotho": write_clotho(root / "clotho", "evaluation", n=4),
           "vggsound": write_vggsound(root / "vggsound", n=8)}
    write_vqav2(root / "vqav2", "val2014", n=6, start=100)
    write_avqa(root / "avqa", "val", n=6)
    write_audiocaps(root / "audiocaps", "val", n=4)
    return out


def mixed_spec(roots: dict[str, Path]) -> dict:
    """A spec mixing every reader: train, val and test each hold VL-only and audio rows."""
    return {
        "train": [{"reader": "audiocaps", "root": str(roots["audiocaps"]), "split": "train"},
                  {"reader": "avqa", "root": str(roots["avqa"]), "split": "train"},
                  {"reader": "vggsound", "root": str(roots["vggsound"]), "split": "train"},
                  {"reader": "vqav2", "root": str(roots["vqav2"]), "split": "train2014"}],
        "val": [{"reader": "avqa", "root": str(roots["avqa"]), "split": "val", "limit": 4},
                {"reader": "audiocaps", "root": str(roots["audiocaps"]), "split": "val", "limit": 2},
                {"reader": "vqav2", "root": str(roots["vqav2"]), "split": "val2014", "limit": 2}],
        "test": [{"reader": "music_avqa", "root": str(roots["music_avqa"]), "split": "test", "limit": 4},
                 {"reader": "gqa", "root": str(roots["gqa"]), "split": "testdev", "limit": 4},
                 {"reader": "clotho", "root": str(roots["clotho"]), "split": "evaluation", "limit": 2},
                 {"reader": "vggsound", "root": str(roots["vggsound"]), "split": "test", "limit": 2}],
        "audio_share": 0.5,
        "seed": 3,
    }
