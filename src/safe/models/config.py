"""``SAFEConfig`` (what SAFE adds to a frozen base, per modality) and the parameter-count report."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from safe.adapters.cross_attention import RANK_MAPS, check_output_scale
from safe.models.projector import PROJECTOR_MODES

HIDDEN_RMS = "hidden_rms"
"""``SAFEConfig.output_scale``'s measured setting."""


@dataclass
class SAFEConfig:
    """What SAFE adds to a frozen base. Every field is validated on construction."""

    fusion_layers: list[int] = field(default_factory=lambda: [-1])
    """Decoder layers after which an adapter runs (negative counts from the end)."""
    num_audio_tokens: int = 8
    """k: audio tokens the projector emits (proposal: 4, 8, 12)."""
    lora_rank: int = 8
    """Rank r of each cross-attention adapter's low-rank maps (which ones: ``rank_maps``)."""
    rank_maps: str = "query"
    """``query``: r is the rank of the query map only (keys, values, output full-width; the layout of
    checkpoints saved before the field existed); ``all``: of the query, key, value and output maps."""
    num_heads: int = 4
    """Attention heads per adapter."""
    attn_dim: int | None = None
    """Adapter attention width; default min(LLM hidden size, 256)."""
    null_key: bool = True
    """Learned null key with a zero value, so a head can attend to nothing."""
    projector_mode: str = "sequence"
    """``sequence`` (pool the encoder sequence to k tokens) or ``pooled`` (one clip embedding -> k)."""
    projector_hidden: int | None = None
    """Projector MLP width; default the LLM hidden size."""
    ffn_rank: int = 0
    """Width of each adapter's low-rank dense block after its cross-attention (0: none, the layout of
    checkpoints saved before the field existed)."""
    gate_init: float = 0.0
    """Initial gate value g (tanh(g) scales the adapter). 0 makes a fresh model exactly the base."""
    output_scale: float | list[float] | str = 1.0
    """A constant multiplying each adapter's output: one number for every fusion layer, a list (one per
    fusion layer, in ``fusion_layers``' order), or ``"hidden_rms"``: the frozen base's hidden-state RMS after
    each fusion layer, measured on the first training rows when Stage A starts
    (:func:`safe.models.calibration.calibrate_output_scale`) and saved as that list. 1.0: the layout of
    checkpoints saved before the field existed. A pretrained LM's residual stream is wide (Gemma 3 270M:
    RMS 700 to 1,100 after layers 9 to 15), so an adapter at unit scale barely moves it."""

    def __post_init__(self) -> None:
        if isinstance(self.fusion_layers, int):
            self.fusion_layers = [self.fusion_layers]
        self.fusion_layers = list(self.fusion_layers)
        if not self.fusion_layers:
            raise ValueError("fusion_layers must name at least one decoder layer, got []")
        for name in ("num_audio_tokens", "lora_rank", "num_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if isinstance(self.ffn_rank, bool) or not isinstance(self.ffn_rank, int) or self.ffn_rank < 0:
            raise ValueError(f"ffn_rank must be an integer >= 0 (0: no dense block), got {self.ffn_rank!r}")
        if self.rank_maps not in RANK_MAPS:
            raise ValueError(f"rank_maps must be one of {RANK_MAPS}, got {self.rank_maps!r}")
        if isinstance(self.output_scale, (list, tuple)):
            if len(self.output_scale) != len(self.fusion_layers):
                raise ValueError(f"output_scale lists one value per fusion layer: {len(self.fusion_layers)} "
                                 f"layers {self.fusion_layers}, got {len(self.output_scale)} values")
            self.output_scale = [check_output_scale(v) for v in self.output_scale]
        elif self.output_scale != HIDDEN_RMS:
            self.output_scale = check_output_scale(self.output_scale)
        if self.projector_mode not in PROJECTOR_MODES:
            raise ValueError(f"projector_mode must be one of {PROJECTOR_MODES}, got {self.projector_mode!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def layer_output_scales(self) -> list[float]:
        """``output_scale`` for each fusion layer (1.0 each while ``"hidden_rms"`` is not yet measured)."""
        s = self.output_scale
        if isinstance(s, list):
            return list(s)
        return [1.0 if s == HIDDEN_RMS else float(s)] * len(self.fusion_layers)

    @classmethod
    def from_dict(cls, d: dict) -> SAFEConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SAFEConfig field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class ParameterReport(dict):
    """Frozen / trainable parameter counts per part (a dict), with :meth:`table` for printing."""

    def table(self) -> str:
        total = self["total"]["parameters"]
        rows = [f"{'part':<16}{'parameters':>14}{'trainable':>14}{'% of total':>12}"]
        for part, c in self.items():
            if part == "total":
                continue
            rows.append(f"{part:<16}{c['parameters']:>14,}{c['trainable']:>14,}{100 * c['parameters'] / total:>11.2f}%")
        t = self["total"]
        rows.append(f"{'total':<16}{t['parameters']:>14,}{t['trainable']:>14,}{100.0:>11.2f}%")
        rows.append(f"frozen {t['parameters'] - t['trainable']:,} ({100 * (1 - t['trainable'] / total):.2f}%), "
                    f"trainable {t['trainable']:,} ({100 * t['trainable'] / total:.2f}%)")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()
