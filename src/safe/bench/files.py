"""The built-in benchmark on disk: generation, integrity checks, split loading and its :class:`DataSource`.

Layout (written by :func:`generate_benchmark`, read by :func:`load_split`)::

    out_dir/images/<split>_<index>.png
    out_dir/audio/<split>_<index>.wav
    out_dir/<split>.jsonl          one ``Example.to_dict()`` per line, paths relative to out_dir
    out_dir/benchmark.json         written last: its presence marks a complete benchmark
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from safe.atomic import staged_file, write_atomic
from safe.bench.audio import PITCH_RANGES_HZ, PITCHED_KINDS, SHAPE_SOUNDS, SOUND_KINDS
from safe.bench.questions import QUESTION_FAMILIES, QUESTION_TEMPLATES, TASK, SynthConfig, make_example, split_plan
from safe.bench.scenes import COLOURS, SHAPES
from safe.data.records import Example
from safe.processing.audio import write_wav

logger = logging.getLogger(__name__)

#: Version of the on-disk layout; :func:`load_split` refuses other versions.
FORMAT_VERSION = 1


class BenchmarkMissingError(FileNotFoundError):
    """The benchmark folder is missing, incomplete (generation did not finish) or modified."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_benchmark_info(out_dir: str | Path) -> dict[str, Any]:
    """Read ``benchmark.json``; raise :class:`BenchmarkMissingError` if absent, unreadable or of another version."""
    out = Path(out_dir)
    path = out / "benchmark.json"
    hint = f"generate it with safe.bench.files.generate_benchmark({str(out)!r}) or `safe data`"
    if not path.is_file():
        raise BenchmarkMissingError(
            f"no complete synthetic benchmark at {out}: {path.name} is missing "
            f"(generation never ran or did not finish); {hint}"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BenchmarkMissingError(f"cannot read {path}: {err}; {hint}") from err
    if info.get("format_version") != FORMAT_VERSION:
        raise BenchmarkMissingError(
            f"{path} has format version {info.get('format_version')!r}, this code reads {FORMAT_VERSION}; {hint}"
        )
    return info


def _is_complete(out: Path, config: SynthConfig) -> bool:
    try:
        info = load_benchmark_info(out)
    except BenchmarkMissingError:
        return False
    if info.get("config") != config.to_dict():
        return False
    for split in info.get("splits", []):
        try:
            load_split(out, split)  # checks the manifest's hash and that every referenced file exists
        except (BenchmarkMissingError, ValueError, KeyError):
            return False
    return True


def generate_benchmark(out_dir: str | Path, config: SynthConfig | None = None, progress: bool = True, *,
                       force: bool = False) -> Path:
    """Write the benchmark for ``config`` (default :class:`SynthConfig`) under ``out_dir``; return the folder.

    If ``out_dir`` already holds a complete benchmark of the same config it is reused unless
    ``force``. ``benchmark.json`` is removed first and written last (to a temporary file, then
    renamed), and each manifest is renamed into place only once complete, so a crash never leaves a
    benchmark that :func:`load_split` accepts. Files of an earlier, larger generation that the new
    manifests do not reference are left in place.
    """
    config = config if config is not None else SynthConfig()
    out = Path(out_dir)
    if not force and _is_complete(out, config):
        logger.info("synthetic benchmark at %s is complete for this config; reusing it", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").unlink(missing_ok=True)  # invalidate before touching anything else
    (out / "images").mkdir(exist_ok=True)
    (out / "audio").mkdir(exist_ok=True)

    sizes = config.split_sizes()
    counts: dict[str, dict[str, int]] = {}
    vocab: dict[str, set[str]] = defaultdict(set)
    digests: dict[str, str] = {}
    with tqdm(total=sum(sizes.values()), desc="synth benchmark", unit="ex", disable=not progress) as bar:
        for split in sizes:
            plan = split_plan(config, split)
            family_counts: Counter[str] = Counter()
            with staged_file(out / f"{split}.jsonl") as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
                for index in range(len(plan)):
                    ex, image, audio = make_example(config, split, index, plan)
                    # PIL writes no timestamp chunk for PNG, so the bytes depend on the pixels only.
                    image.save(out / ex.image, format="PNG")
                    write_wav(out / ex.audio, audio, config.sample_rate)
                    f.write(json.dumps(ex.to_dict(), sort_keys=True) + "\n")
                    family_counts[ex.family] += 1
                    vocab[ex.family].add(ex.answer)
                    bar.update(1)
            digests[split] = sha256_file(out / f"{split}.jsonl")
            counts[split] = {fam: family_counts[fam] for fam in QUESTION_FAMILIES if family_counts[fam]}

    info = {
        "format_version": FORMAT_VERSION,
        "task": TASK,
        "config": config.to_dict(),
        "splits": list(sizes),
        "counts": {split: {"total": sizes[split], "families": counts[split]} for split in sizes},
        "families": dict(QUESTION_FAMILIES),
        "question_templates": dict(QUESTION_TEMPLATES),
        "answer_vocab": {fam: sorted(vocab[fam]) for fam in QUESTION_FAMILIES if fam in vocab},
        "answers": sorted(set().union(*vocab.values())) if vocab else [],
        "sound_kinds": list(SOUND_KINDS),
        "pitched_kinds": list(PITCHED_KINDS),
        "in_distribution_sounds": list(config.in_distribution_sounds),
        "held_out_sounds": list(config.held_out_sounds),
        "shape_sounds": dict(SHAPE_SOUNDS),
        "shapes": list(SHAPES),
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "pitch_ranges_hz": {k: list(v) for k, v in PITCH_RANGES_HZ.items()},
        "manifest_sha256": digests,
    }
    write_atomic(out / "benchmark.json", json.dumps(info, indent=2) + "\n")
    logger.info("wrote synthetic benchmark to %s: %s", out, {s: sizes[s] for s in sizes})
    return out


def benchmark_fingerprint(out_dir: str | Path) -> str:
    """Short content id of a generated benchmark (hash of its ``benchmark.json``, which holds the config
    and the SHA-256 of every manifest): models and checkpoints record it to know what they were trained on."""
    return hashlib.sha256((Path(out_dir) / "benchmark.json").read_bytes()).hexdigest()[:16]


def load_split(out_dir: str | Path, split: str) -> list[Example]:
    """Read one split's examples with image and audio paths made absolute.

    Raises :class:`BenchmarkMissingError` if the benchmark is missing, incomplete, modified since
    generation, or a referenced file is gone, and ``ValueError`` for a split it does not have.
    """
    out = Path(out_dir).resolve()
    info = load_benchmark_info(out)
    if split not in info["splits"]:
        raise ValueError(f"split {split!r} is not in the benchmark at {out}; splits: {info['splits']}")
    path = out / f"{split}.jsonl"
    if not path.is_file():
        raise BenchmarkMissingError(f"manifest {path} is missing; regenerate the benchmark")
    if sha256_file(path) != info["manifest_sha256"].get(split):
        raise BenchmarkMissingError(
            f"manifest {path} does not match benchmark.json (incomplete or modified); regenerate the benchmark"
        )
    examples = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            for key in ("image", "audio"):
                if d[key] is not None:
                    p = out / d[key]
                    if not p.is_file():
                        raise BenchmarkMissingError(f"{p} (listed in {path.name}) is missing; regenerate the benchmark")
                    d[key] = str(p)
            examples.append(Example.from_dict(d))
    return examples


class BuiltinSource:
    """The built-in benchmark folder ``root`` as a :class:`~safe.data.source.DataSource`.

    Reads nothing when built (a missing benchmark is reported by the first :meth:`split`,
    :meth:`has_split` or :meth:`fingerprint`, as :class:`BenchmarkMissingError`). :meth:`split` is
    :func:`load_split` (manifest hash and every media file checked on each call), :meth:`fingerprint`
    is :func:`benchmark_fingerprint`, and the embedding cache lives in ``root/.embedding_cache``.
    """

    name = "builtin"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def cache_dir(self) -> Path:
        """``root/.embedding_cache``: where stages keep the frozen audio encoder's outputs."""
        return self.root / ".embedding_cache"

    def split(self, name: str) -> list[Example]:
        """The records of split ``name`` with absolute paths (see :func:`load_split`)."""
        return load_split(self.root, name)

    def has_split(self, name: str) -> bool:
        """Whether the benchmark was generated with split ``name`` (``ood_test`` needs held-out sounds)."""
        return name in load_benchmark_info(self.root)["splits"]

    def fingerprint(self) -> str:
        """:func:`benchmark_fingerprint` of the folder."""
        return benchmark_fingerprint(self.root)

    def retention_source(self) -> dict:
        """Where the retention buffer comes from and its size (a run records it in ``metrics.json``)."""
        return {"source": "the built-in benchmark's retention split (scenes generated apart from train)",
                "rows": len(self.split("retention")), "held_out": True}

    def __repr__(self) -> str:
        return f"BuiltinSource({str(self.root)!r})"
