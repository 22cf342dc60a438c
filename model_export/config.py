"""TR-DETR hyper-parameters, named as the official `opt` (argparse Namespace) names them.

`v_feat_dim` is the full width of `src_vid` *including* the 2 TEF columns when `use_tef` is set (what
the official code's live `opt.v_feat_dim` holds after `BaseOptions.parse()`; the `opt.json` written beside
a checkpoint holds it without the +2). `checkpoint.py` resolves the ambiguity against the state_dict.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The decoder's query sine embedding (`gen_sineembed_for_position`) is hard-coded 256 wide in the
#: official code, so every official model has hidden_dim 256.
OFFICIAL_HIDDEN_DIM = 256
TEF_DIM = 2

# Fields of the official opt that the model does not use but the official build_model / criterion read;
# written by `to_opt()` so an official-format checkpoint we write can be loaded by the official code.
_OFFICIAL_OPT_DEFAULTS: dict[str, Any] = {
    "dset_name": "hl",
    "position_embedding": "sine",
    "a_feat_dir": None,
    "device": "cpu",
    "saliency_margin": 0.2,
    "lw_saliency": 1.0,
    "set_cost_span": 10,
    "set_cost_giou": 1,
    "set_cost_class": 4,
    "span_loss_coef": 10,
    "giou_loss_coef": 1,
    "label_loss_coef": 4,
    "eos_coef": 0.1,
    "contrastive_align_loss_coef": 0.0,
    "VTC_loss_coef": 0.3,
    "CTC_loss_coef": 0.5,
}


class ConfigError(ValueError):
    """A configuration TR-DETR cannot be built from (the message says which field to fix)."""


@dataclass(frozen=True)
class TRDETRConfig:
    """Architecture of one TR-DETR model (field names equal the official `opt`)."""

    v_feat_dim: int
    t_feat_dim: int
    a_feat_dim: int | None = None
    hidden_dim: int = OFFICIAL_HIDDEN_DIM
    nheads: int = 8
    enc_layers: int = 2
    dec_layers: int = 2
    dim_feedforward: int = 1024
    num_queries: int = 10
    dropout: float = 0.1
    input_dropout: float = 0.5
    n_input_proj: int = 2
    pre_norm: bool = False
    use_txt_pos: bool = False
    aux_loss: bool = True
    span_loss_type: str = "l1"
    max_v_l: int = 75
    max_q_l: int = 32
    clip_length: float = 2.0
    contrastive_hdim: int = 64
    contrastive_align_loss: bool = False
    temperature: float = 0.07
    use_tef: bool = True
    ctx_mode: str = "video_tef"
    position_embedding: str = "sine"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the field when the official architecture cannot be built."""
        if self.hidden_dim != OFFICIAL_HIDDEN_DIM:
            raise ConfigError(
                f"hidden_dim={self.hidden_dim} is not supported: the TR-DETR decoder's query sine embedding is "
                f"{OFFICIAL_HIDDEN_DIM} wide, so hidden_dim must be {OFFICIAL_HIDDEN_DIM}"
            )
        if self.nheads < 1 or self.hidden_dim % self.nheads:
            raise ConfigError(f"nheads={self.nheads} must divide hidden_dim={self.hidden_dim}")
        if not 1 <= self.n_input_proj <= 3:
            raise ConfigError(f"n_input_proj={self.n_input_proj} must be 1, 2 or 3")
        if self.span_loss_type != "l1":
            raise ConfigError(f"span_loss_type={self.span_loss_type!r}: only 'l1' (centre/width spans) is supported")
        if self.pre_norm:
            raise ConfigError("pre_norm=True is not supported (the official pre-norm text-to-video layer is broken)")
        if self.position_embedding not in ("sine", "v2"):
            raise ConfigError(f"position_embedding={self.position_embedding!r}: only 'sine' is supported")
        positive = ("v_feat_dim", "t_feat_dim", "enc_layers", "dec_layers", "dim_feedforward", "num_queries")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.a_feat_dim is not None and self.a_feat_dim < 1:
            raise ConfigError(f"a_feat_dim={self.a_feat_dim} must be None (no audio) or >= 1")
        if not (self.clip_length > 0 and math.isfinite(self.clip_length)):
            raise ConfigError(f"clip_length={self.clip_length} must be a positive number of seconds")

    @property
    def vid_input_dim(self) -> int:
        """Width of the first video projection's input: video (incl. TEF) plus audio features."""
        return self.v_feat_dim + (self.a_feat_dim or 0)

    @classmethod
    def from_opt(cls, opt: argparse.Namespace | Mapping[str, Any], *, vid_input_dim: int | None = None) -> TRDETRConfig:
        """Build from an official / Lighthouse opt (Namespace, dict or EasyDict) or from `to_dict()`.

        `vid_input_dim` (the state_dict's `input_vid_proj.0` input width) settles whether `opt.v_feat_dim`
        already counts the TEF columns; without it an opt carrying `use_tef` (the live official opt) or
        `model_name` (Lighthouse) is taken to count them and an `opt.json`-style one to not.
        """
        raw = dict(vars(opt)) if isinstance(opt, argparse.Namespace) else dict(opt)
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [name for name in ("v_feat_dim", "t_feat_dim") if raw.get(name) is None]
        if missing:
            raise ConfigError(f"opt lacks {missing}: cannot tell the input feature widths")
        kwargs = {k: raw[k] for k in known if k in raw and raw[k] is not None}
        # The official build_model adds audio only when `a_feat_dir` is set (Lighthouse: when a_feat_dim is).
        audio_off = "a_feat_dir" in raw and raw["a_feat_dir"] is None
        kwargs["a_feat_dim"] = None if audio_off else (raw.get("a_feat_dim") or None)
        ctx_mode = str(raw.get("ctx_mode", "video_tef"))
        kwargs["use_tef"] = bool(raw.get("use_tef", "tef" in ctx_mode))
        kwargs["v_feat_dim"] = _resolve_v_feat_dim(raw, kwargs["use_tef"], kwargs["a_feat_dim"], vid_input_dim)
        kwargs["clip_length"] = float(kwargs.get("clip_length", 2.0))
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (`from_opt` reads it back)."""
        out = dataclasses.asdict(self)
        out["use_tef"] = self.use_tef
        return out

    def to_opt(self) -> argparse.Namespace:
        """Official-style opt (live semantics: `v_feat_dim` counts TEF, `use_tef` present)."""
        fields = dict(_OFFICIAL_OPT_DEFAULTS)
        fields.update(self.to_dict())
        if self.a_feat_dim is not None:
            fields["a_feat_dir"] = "audio_features"  # placeholder: the official code keys audio on it being set
        fields["clip_length"] = int(self.clip_length) if float(self.clip_length).is_integer() else self.clip_length
        return argparse.Namespace(**fields)


def _resolve_v_feat_dim(raw: dict[str, Any], use_tef: bool, a_feat_dim: int | None, vid_input_dim: int | None) -> int:
    """Full video width incl. TEF, checked against the checkpoint's first video projection when known."""
    stated = int(raw["v_feat_dim"])
    audio = a_feat_dim or 0
    if vid_input_dim is None:
        counts_tef = "use_tef" in raw or "model_name" in raw or not use_tef
        return stated if counts_tef else stated + TEF_DIM
    if stated + audio == vid_input_dim:
        return stated
    if use_tef and stated + TEF_DIM + audio == vid_input_dim:
        return stated + TEF_DIM
    raise ConfigError(
        f"opt.v_feat_dim={stated} (a_feat_dim={a_feat_dim}, use_tef={use_tef}) does not match the checkpoint's "
        f"input_vid_proj input width {vid_input_dim}: fix v_feat_dim/a_feat_dim in the opt"
    )
