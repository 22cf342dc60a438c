"""The model bundle's ``manifest.json``: the contract between the exporter and the service.

A bundle is a directory written by ``trdetr-export``::

    BUNDLE_DIR/
      manifest.json        # this schema
      model.onnx           # fp32 TR-DETR graph
      model.fp16.onnx      # optional, fp16 weights, fp32 inputs/outputs
      model.int8.onnx      # optional, int8 weight MatMuls for the CPU, fp32 inputs/outputs
      text_encoder.onnx    # optional, CLIP text transformer (token ids -> (B, L, 512))
      tokenizer.json       # optional, for the `tokenizers` library
      image_encoder.onnx   # optional, CLIP image tower (B, 3, 224, 224) -> (B, 512), group "clip"
      slowfast.onnx        # optional, SlowFast 8x8 (slow, fast clips) -> (B, 2304), group "slowfast"
      audio_encoder.onnx   # optional, PANN Cnn14 (B, 64000) 32-kHz waveform -> (B, 2048), audio group "pann"
      parity.json          # full parity report

Everything the service needs to use the model correctly without torch is here: the
preprocessing contract (feature groups, normalisation, TEF), output semantics and the
sha256 of every file. This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trdetr_common.audio_encoders import PannEncoderSpec
from trdetr_common.features import tef_offsets
from trdetr_common.video_encoders import GROUP_ALIGNMENT, VideoEncoderSpec

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VideoFeatureGroup(_Strict):
    """One group of per-clip video features, e.g. SlowFast (2304) or CLIP image (512)."""

    name: str = Field(description="Group name, also the array name expected in uploaded .npz files.")
    dim: int = Field(gt=0, description="Feature width of this group.")
    encoder: VideoEncoderSpec | None = Field(
        default=None,
        description="The bundled encoder that computes this group from a video file, with its exact "
        "preprocessing (trdetr_common.video_encoders); None: the group can only be uploaded as features.",
    )


class AudioFeatureGroup(_Strict):
    """One group of per-clip audio features, e.g. PANN Cnn14 (2048), for models trained with audio."""

    name: str = Field(description="Group name, also the array name expected in uploaded .npz files.")
    dim: int = Field(gt=0, description="Feature width of this group (without TEF).")
    encoder: PannEncoderSpec | None = Field(
        default=None,
        description="The bundled encoder that computes this group from a video file's audio track "
        "(trdetr_common.audio_encoders); None: the group can only be uploaded as features.",
    )


class TextEncoderSpec(_Strict):
    """Which text features the model expects and, when bundled, how to compute them."""

    expected: str = Field(
        description="Human-readable description of the text features the model was trained on."
    )
    onnx_file: str | None = Field(
        default=None, description="Bundled text encoder: input_ids/attention_mask -> last_hidden_state."
    )
    tokenizer_file: str | None = Field(default=None, description="tokenizer.json for the `tokenizers` library.")
    context_length: int | None = Field(default=None, description="Tokenizer truncation length (77 for CLIP).")
    text_cleaning: Literal["openai-clip", "none"] = Field(
        default="openai-clip",
        description=(
            "What is done to a query before tokenizer_file (trdetr_common.text): 'openai-clip' = OpenAI CLIP's "
            "simple_tokenizer cleaning (ftfy.fix_text, html.unescape twice, whitespace runs to one space, strip, "
            "lowercase), which made the training queries' features; 'none' = tokenizer_file alone. Bundles "
            "written before this field existed hold CLIP's tokenizer too and get 'openai-clip'."
        ),
    )
    input_names: list[str] = Field(
        default=["input_ids", "attention_mask"],
        description="Bundled encoder inputs, both int64 (batch, tokens); attention_mask 1 = real token.",
    )
    output_name: str = Field(
        default="last_hidden_state", description="Bundled encoder output (batch, tokens, text_dim), float32."
    )
    embedding_output: str | None = Field(
        default=None,
        description="Second encoder output (batch, P), float32: the CLIP projected text embedding at the "
        "<|endoftext|> token, L2-normalised (get_text_features / encode_text divided by its norm); None: the "
        "encoder has none (bundles exported before it existed, or from a directory without the projection), and "
        "POST /v1/search has no stage-1 candidate index.",
    )
    embedding_group: str | None = Field(
        default=None,
        description="The video feature group in the same embedding space as embedding_output (the CLIP image "
        "group, made by the same CLIP model's image tower); POST /v1/search summarises it per video for stage 1.",
    )
    token_selection: str = Field(
        default=(
            "all tokens with attention_mask 1, i.e. <|startoftext|>, the query tokens and <|endoftext|>, "
            "in order; padding rows dropped; then the first max_text_tokens rows"
        ),
        description="Which rows of the encoder output form src_txt (the model saw exactly these).",
    )


class PreprocessingContract(_Strict):
    """How raw per-clip features become the model's ``src_vid`` / ``src_txt`` inputs."""

    clip_length_s: float = Field(gt=0, description="Seconds of video per clip (2.0 for QVHighlights).")
    video_groups: list[VideoFeatureGroup] = Field(
        min_length=1, description="Ordered video feature groups; concatenated in this order."
    )
    video_groups_source: Literal["official", "lighthouse", "checkpoint", "flag", "unknown"] = Field(
        description="Where the group layout came from; 'unknown' means one group covering the full width."
    )
    video_groups_note: str | None = Field(
        default=None, description="Why the layout is what it is (always set when the source is 'unknown')."
    )
    video_groups_alignment: str = Field(
        default=GROUP_ALIGNMENT, description="How groups of different clip counts are brought to one length."
    )
    l2_normalize_video: bool = Field(description="L2-normalise each group separately before concatenation.")
    l2_eps: float = Field(default=1e-5, description="x / (||x|| + eps), as the official dataset does.")
    tef: bool = Field(description="Append the 2 temporal endpoint columns [i/T, (i+1)/T].")
    video_input_dim: int = Field(
        gt=0, description="Width of the graph's src_vid: video group dims (+2 with TEF), then audio group dims "
        "(+2 with audio_tef) for audio models.",
    )
    text_dim: int = Field(gt=0, description="Width of src_txt (512 for CLIP ViT-B/32 token states).")
    max_text_tokens: int = Field(gt=0, description="Text features are truncated to this many tokens.")
    l2_normalize_text: bool = Field(description="L2-normalise each text token feature.")
    max_video_clips: int = Field(gt=0, description="Longest video (in clips) the model was trained on.")
    text_encoder: TextEncoderSpec
    audio_groups: list[AudioFeatureGroup] = Field(
        default_factory=list,
        description=(
            "Ordered audio feature groups of a model trained with audio (official a_feat_dir, Lighthouse "
            "*_pann); empty for video+text models. They are part of the single src_vid input, after the "
            "video groups and their TEF: src_vid = [video groups | TEF | audio groups | TEF if audio_tef]. "
            "The official model's first step is torch.cat([src_vid, src_aud], dim=2) with one shared clip "
            "mask, so one input computes the same thing, and padding, batching, long-video windows and the "
            "fp16 graph need nothing of their own."
        ),
    )
    audio_tef: bool = Field(
        default=False,
        description="The 2 TEF columns are appended after the audio groups too (official "
        "start_end_dataset_audio: a_feat_dim 2050 = 2048 + TEF); Lighthouse does not (a_feat_dim 2048).",
    )
    l2_normalize_audio: bool = Field(default=True, description="L2-normalise each audio group separately.")
    audio_groups_source: Literal["official", "lighthouse", "checkpoint", "flag"] | None = Field(
        default=None, description="Where the audio layout came from (None without audio)."
    )
    audio_alignment: str | None = Field(
        default=None, description="How audio and video clip counts are reconciled (set with audio)."
    )

    @property
    def feature_groups(self) -> list[VideoFeatureGroup | AudioFeatureGroup]:
        """Every group a features upload holds, in stored order: video groups, then audio groups."""
        return [*self.video_groups, *self.audio_groups]

    @property
    def group_normalization(self) -> list[bool]:
        """Per group of :attr:`feature_groups`: L2-normalise it."""
        return [self.l2_normalize_video] * len(self.video_groups) + [self.l2_normalize_audio] * len(self.audio_groups)

    @property
    def stored_dim(self) -> int:
        """Width of stored features: every group concatenated, without TEF."""
        return sum(g.dim for g in self.feature_groups)

    @property
    def tef_after(self) -> tuple[int, ...]:
        """Stored-column positions after which a TEF pair is inserted into the model input."""
        if not self.tef:
            return ()
        video = sum(g.dim for g in self.video_groups)
        return (video, self.stored_dim) if self.audio_groups and self.audio_tef else (video,)

    @property
    def tef_offsets(self) -> tuple[int, ...]:
        """Model-input (src_vid) columns where each TEF pair starts."""
        return tef_offsets(self.tef_after)


class FileEntry(_Strict):
    sha256: str
    bytes: int


class OnnxSpec(_Strict):
    opset: int
    fp32_file: str = "model.onnx"
    fp16_file: str | None = None
    fp16_ops_kept_fp32: list[str] | None = Field(
        default=None, description="Op types the fp16 graph still computes in float32 (its I/O is float32 too)."
    )
    int8_file: str | None = Field(
        default=None, description="CPU graph with int8 weight MatMuls (float32 I/O), gated separately; optional."
    )
    int8_quantization: str | None = Field(default=None, description="How the int8 graph was quantized.")
    input_names: list[str] = ["src_txt", "src_txt_mask", "src_vid", "src_vid_mask"]
    output_names: list[str] = ["pred_logits", "pred_spans", "saliency_scores"]


class SourceCheckpoint(_Strict):
    file_name: str
    sha256: str
    checkpoint_format: Literal["official", "lighthouse", "trdetr-service"]
    epoch: int | None = None


class Manifest(BaseModel):
    """Top-level ``manifest.json``. Unknown extra keys are kept (forward compatible)."""

    model_config = ConfigDict(extra="allow")

    format_version: int = FORMAT_VERSION
    created_at: str
    source: SourceCheckpoint
    config: dict = Field(description="The TR-DETR config (model_export.config.TRDETRConfig fields) of the model.")
    onnx: OnnxSpec
    preprocessing: PreprocessingContract
    outputs: dict[str, str] = Field(description="Meaning of each model output.")
    files: dict[str, FileEntry] = Field(description="sha256 and size of every bundle file but the manifest.")
    parity: dict = Field(default_factory=dict, description="Summary of parity results (full report: parity.json).")
    untrained: bool = Field(default=False, description="True for demo bundles with random weights.")
    notes: list[str] = Field(default_factory=list)

    @classmethod
    def load(cls, bundle_dir: str | Path) -> Manifest:
        path = Path(bundle_dir) / MANIFEST_NAME
        return cls.model_validate(json.loads(path.read_text()))

    def groups_without_encoder(self) -> list[str]:
        """Names of the feature groups (video and audio) that no bundled encoder computes (video ingestion
        needs none)."""
        return [g.name for g in self.preprocessing.feature_groups if g.encoder is None]

    def dump(self, bundle_dir: str | Path) -> Path:
        path = Path(bundle_dir) / MANIFEST_NAME
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: str | Path) -> FileEntry:
    path = Path(path)
    return FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)


def verify_files(bundle_dir: str | Path, manifest: Manifest) -> list[str]:
    """Return one message per file that is missing or whose sha256 differs; empty when all match."""
    problems = []
    for name, entry in manifest.files.items():
        path = Path(bundle_dir) / name
        if not path.is_file():
            problems.append(f"{name}: listed in the manifest but missing from the bundle")
        elif (actual := sha256_file(path)) != entry.sha256:
            problems.append(f"{name}: sha256 {actual} does not match the manifest's {entry.sha256}")
    return problems
