"""``safe data check SPEC``: read every split of a data spec as the stages will, and say what came out."""
from __future__ import annotations

from dataclasses import dataclass, field

from safe.runs import StageResult

#: The splits each stage reads (``retention`` may be derived from train).
STAGE_SPLITS = {"safe train / safe ablate": ("train", "retention", "test"),
                "safe policy train": ("train", "val", "test"), "safe eval": ("test",)}


@dataclass
class DataCheckConfig:
    """Options of ``safe data check``."""

    spec: str = field(metadata={"positional": True})
    """The data spec YAML file to check (see docs/data.md), or a built-in benchmark folder."""
    verify_media: bool = True
    """Open every image and decode every clip (--no-verify-media: existence checks only, faster)."""
    reasons: int = 3
    """How many skip reasons and unopened media to print per source."""
    strict: bool = False
    """Exit 1 when any row was skipped or any medium could not be opened."""

    def __post_init__(self) -> None:
        if isinstance(self.reasons, bool) or not isinstance(self.reasons, int) or self.reasons < 0:
            raise ValueError(f"--reasons must be an integer >= 0, got {self.reasons!r}")


@dataclass
class DataCheckResult(StageResult):
    """Per split and source: rows read and skipped (first reasons), tasks, the audio-dependent share and
    media that could not be opened (``SpecSource.reports()``), plus which stages can run."""

    KEY = "data_check"
    reasons: int = 3
    strict: bool = False

    @property
    def skipped(self) -> int:
        return sum(s["skipped"] for sp in self.metrics["splits"].values() for s in sp["sources"])

    @property
    def ok(self) -> bool:
        return not (self.strict and self.skipped)

    def summary(self) -> str:
        m = self.metrics
        share = "the recipe's" if m["audio_share"] is None else f"{m['audio_share']:g}"
        lines = [f"data spec {m['spec']} (seed {m['seed']}, audio_share {share}, fingerprint {m['fingerprint']})"]
        for name, sp in m["splits"].items():
            tasks = ", ".join(f"{t} {n}" for t, n in sp["tasks"].items())
            origin = " (held out of train's VL-only rows; train no longer has them)" if sp["derived_from_train"] else ""
            lines.append(f"{name}{origin}: {sp['rows']} rows, audio-dependent share {sp['audio_dependent_share']:.3f}; "
                         f"tasks: {tasks}; paired: {sp['paired_audio']} VL rows got an unrelated clip, "
                         f"{sp['stand_in_image']} rows the stand-in image"
                         + "".join(f"; {n} rows with a {k} map" for k, n in (sp.get("modalities") or {}).items()))
            for s in sp["sources"]:
                lines.append(f"  {s['source']:<12}{s['reader']:<28}{s['rows']:>8} rows {s['skipped']:>6} skipped "
                             f"{s['media_failures']:>6} media not opened")
                lines += [f"      media not opened: {p}" for p in s["media_problems"][: self.reasons]]
                lines += [f"      skipped: {p}" for p in [p for p in s["problems"] if p not in s["media_problems"]]
                          [: self.reasons]]
        train = m["splits"].get("train") or {}
        for stage, needs in STAGE_SPLITS.items():
            missing = [s for s in needs if s not in m["splits"]]
            deaf = stage != "safe eval" and train and not train["audio_dependent_share"]
            lines.append(f"{stage}: " + (f"needs {', '.join(missing)}, which the spec does not give" if missing
                                         else "needs audio-dependent rows in train (none here)" if deaf
                                         else f"ok ({', '.join(needs)})"))
        for name, n in (train.get("modalities") or {}).items():  # safe train --modality NAME reads the maps
            lines.append(f"safe train --modality {name}: " + (f"ok ({n} training rows with a {name} map)" if n else
                                                               f"needs training rows with a {name} map (none here)"))
        if self.skipped and not m["skip_bad"]:
            lines.append("note: skip_bad is false in the spec, so the stages stop at the first skipped row above")
        return "\n".join(lines)


def check_data(cfg: DataCheckConfig) -> DataCheckResult:
    """Read the spec's splits (every bad row counted, not raised), pair them, and report."""
    from pathlib import Path

    from safe.data.spec import load_spec
    from safe.data.spec_source import SpecSource

    folder = Path(cfg.spec)
    # A built-in benchmark folder (what --data also takes) is checked as the spec {reader: builtin, root: folder}.
    spec = load_spec({"reader": "builtin", "root": str(folder.absolute())}) if folder.is_dir() else load_spec(cfg.spec)
    source = SpecSource(spec, skip_bad=True, verify_media=cfg.verify_media)
    splits = source.reports()
    skip_bad = all(e.skip_bad for entries in spec.splits.values() for e in entries)
    metrics = {"spec": str(spec.path or folder), "seed": spec.seed, "audio_share": spec.audio_share, "skip_bad": skip_bad,
               "fingerprint": source.fingerprint(), "splits": splits}
    return DataCheckResult(metrics, reasons=cfg.reasons, strict=cfg.strict)
