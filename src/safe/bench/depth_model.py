"""The depth track's frozen depth encoder (a small transformers ``ViTModel`` over one-channel depth maps,
pretrained once here and shipped), and the track itself: Stage A for depth on the built-in base through
the same trainer, retention loss and evaluation as audio, into its own run directory.

The encoder learns, per 16 px patch (one grid cell), whether an object stands there, its shape and its
nearness; then it is frozen and only its last hidden states (class token + one token per cell) are used.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from safe.bench.depth import (
    BACKGROUND_DEPTH,
    DEPTH_FAMILIES,
    NEAR,
    SHIPPED_DEPTH_ENCODER,
    DepthSplits,
    depth_pixels,
    depth_processor,
    depth_split,
    distinct_depths,
    load_depth_processor,
    render_depth,
)
from safe.bench.questions import SynthConfig
from safe.bench.scenes import SHAPES, random_scene


@dataclass
class DepthEncoderConfig:
    """The depth encoder's size and its one pretraining run."""

    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    scenes: int = 4000
    steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0

    @classmethod
    def tiny(cls) -> DepthEncoderConfig:
        return cls(hidden_size=32, scenes=200, steps=20, batch_size=16)


def depth_vit(cfg: DepthEncoderConfig, scene: SynthConfig) -> nn.Module:
    import transformers as tf

    torch.manual_seed(cfg.seed)
    return tf.ViTModel(tf.ViTConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
                                    num_attention_heads=cfg.heads, intermediate_size=2 * cfg.hidden_size,
                                    image_size=scene.image_size, patch_size=scene.cell_size, num_channels=1),
                       add_pooling_layer=False)


def _scene_bank(cfg: DepthEncoderConfig, scene: SynthConfig):
    """(n, 1, H, W) depth inputs and per-cell targets: shape (0 none, 1..3) and nearness in [0, 1]."""
    rng = np.random.default_rng([cfg.seed, 7])
    g = scene.grid
    maps, shapes, near = [], np.zeros((cfg.scenes, g * g), np.int64), np.zeros((cfg.scenes, g * g), np.float32)
    for i in range(cfg.scenes):
        objects = random_scene(rng, scene)
        objects = [{**o, "depth": d} for o, d in zip(objects, distinct_depths(rng, len(objects)))]
        maps.append(depth_pixels(render_depth(objects, scene.image_size, g)))
        for o in objects:
            cell = o["row"] * g + o["col"]
            shapes[i, cell] = SHAPES.index(o["shape"]) + 1
            near[i, cell] = (BACKGROUND_DEPTH - o["depth"]) / (BACKGROUND_DEPTH - NEAR)
    return torch.from_numpy(np.stack(maps)), torch.from_numpy(shapes), torch.from_numpy(near)


def train_depth_encoder(out_dir: str | Path, cfg: DepthEncoderConfig | None = None,
                        scene: SynthConfig | None = None, progress: bool = False) -> dict:
    """Pretrain the depth ViT on random depth scenes, save it (``save_pretrained``) to ``out_dir`` with a
    ``manifest.json`` of its held-out figures, and return them."""
    cfg, scene = cfg or DepthEncoderConfig(), scene or SynthConfig()
    t0 = time.perf_counter()
    x, shapes, near = _scene_bank(cfg, scene)
    n_eval = max(1, len(x) // 10)
    model = depth_vit(cfg, scene)
    head = nn.Linear(cfg.hidden_size, len(SHAPES) + 2)  # shape logits (incl. none) + nearness
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)

    def losses(idx):
        out = head(model(pixel_values=x[idx]).last_hidden_state[:, 1:])  # one token per cell
        ce = nn.functional.cross_entropy(out[..., :-1].reshape(-1, len(SHAPES) + 1), shapes[idx].reshape(-1))
        mse = nn.functional.mse_loss(out[..., -1], near[idx])
        return ce + 10 * mse, out

    model.train()
    for step in range(cfg.steps):
        idx = n_eval + torch.randint(len(x) - n_eval, (cfg.batch_size,), generator=gen)
        loss, _ = losses(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress and step % 100 == 0:
            print(f"depth encoder step {step}: loss {loss.item():.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        _, out = losses(torch.arange(n_eval))
    shape_acc = float((out[..., :-1].argmax(-1) == shapes[:n_eval]).float().mean())
    near_err = float((out[..., -1] - near[:n_eval]).abs().mean())
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    depth_processor(scene.image_size).save_pretrained(str(out_dir))  # its inputs, as load_depth_processor reads them
    figures = {"cell_shape_accuracy": round(shape_acc, 4), "nearness_mae": round(near_err, 4),
               "parameters": sum(p.numel() for p in model.parameters()), "seconds": round(time.perf_counter() - t0, 1),
               "config": asdict(cfg), "scene": scene.to_dict()}
    (out_dir / "manifest.json").write_text(json.dumps(figures, indent=2))
    return figures


def load_depth_encoder(path: str | Path | None = None) -> nn.Module:
    """The shipped (or a given) pretrained depth ViT, frozen."""
    from transformers import ViTModel

    model = ViTModel.from_pretrained(str(path or SHIPPED_DEPTH_ENCODER), local_files_only=True, add_pooling_layer=False)
    return model.requires_grad_(False).eval()


@torch.no_grad()
def prepare_depth(model, fmt, scene: SynthConfig, splits: DepthSplits, split: str, batch: int = 256):
    """A :class:`~safe.data.prepared.PreparedSet` of the depth track's ``split``: prompts, pictures, the
    frozen depth encoder's outputs (in the slot the trainer reads a modality's embeddings from) and which
    rows need depth."""
    from safe.data.prepared import PreparedSet
    from safe.processing.prompts import load_pixels

    examples, pictures, depth = depth_split(scene, splits, split)
    front = load_depth_processor()
    enc = model.audio_encoder  # the depth model's primary modality: its frozen depth encoder
    emb = torch.cat([enc.encode(front(depth[i:i + batch], "depth")).float().cpu()
                     for i in range(0, len(depth), batch)])
    needs = torch.tensor([e.needs_audio for e in examples])
    return PreparedSet(examples, fmt.encode(examples), load_pixels(pictures), emb, needs)


def run_depth_track(run_dir: str | Path, vl_dir: str | Path, recipe, *, encoder_dir: str | Path | None = None,
                    splits: DepthSplits | None = None, progress: bool = True, policy: dict | None = None) -> dict:
    """Stage A for depth on the built-in VL base (``vl_dir``) with the frozen depth encoder: train, then
    evaluate on the test split (base vs SAFE gate closed / open). Returns the figures, depth rows named
    ``depth_*``; SAFE's depth weights land in ``run_dir/checkpoints/final`` (a depth-primary checkpoint
    that :meth:`SAFEModel.load_modality` adds next to audio). ``policy``: keyword arguments of
    :func:`~safe.bench.depth_policy.depth_policy` to also train and score the depth policy (key ``policy``);
    None skips it."""
    from safe.models.integrity import state_hash
    from safe.models.safe_model import SAFEModel
    from safe.processing.prompts import load_vl_model
    from safe.training.evaluate import evaluate_stage_a
    from safe.training.stage_a import StageATrainer

    t0 = time.perf_counter()
    splits, scene = splits or DepthSplits(), SynthConfig()
    base, _, fmt = load_vl_model(vl_dir)
    model = SAFEModel(base, load_depth_encoder(encoder_dir), recipe.safe_config(), modality="depth")
    hashes = {"base_vl": state_hash(model.base_model), "depth_encoder": state_hash(model.audio_encoder)}
    data = {s: prepare_depth(model, fmt, scene, splits, s) for s in ("train", "retention", "test")}
    trainer = StageATrainer(model, fmt, data["train"], data["retention"], recipe, run_dir, progress=progress,
                            fingerprint={**hashes, "splits": asdict(splits)})
    fit = trainer.fit(resume=True)
    result = evaluate_stage_a(model, fmt, data["test"], progress=progress)
    after = {"base_vl": state_hash(model.base_model), "depth_encoder": state_hash(model.audio_encoder)}
    renamed = {k.replace("audio_", "depth_"): v for k, v in result.items() if k != "samples"}
    if policy is not None:
        from safe.bench.depth_policy import depth_policy

        renamed["policy"] = depth_policy(model, fmt, scene, splits, data["train"], data["test"],
                                         **{"save_dir": Path(run_dir) / "policy",
                                            "checkpoint_dir": Path(run_dir) / "checkpoints" / "policy", **policy})
    return {**renamed, "depth_families": list(DEPTH_FAMILIES), "frozen_byte_identical": hashes == after,
            "train_seconds": fit["seconds"], "steps": fit["steps"], "seconds": round(time.perf_counter() - t0, 2),
            "parameters": dict(model.parameter_report()), "config": recipe.to_dict(),
            "checkpoint": str(Path(run_dir) / "checkpoints" / "final"), "samples": result["samples"]}
