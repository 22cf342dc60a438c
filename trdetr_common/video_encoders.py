"""Which encoder computes each video feature group, and its exact preprocessing (manifest schema).

A bundle's ``manifest.json`` lists the video feature groups the model reads (``slowfast`` 2304,
``clip`` 512 for QVHighlights). When the bundle also carries the encoder that produced a group
(``trdetr-export --clip DIR --slowfast PATH``), the group's ``encoder`` field says which ONNX file
computes it and every number of its preprocessing, so ``extraction`` turns a video file into exactly
the features the model was trained on. A group without an encoder can still be served from uploaded
features, but video files cannot be ingested for it.

One encoder *kind* per group, each with its own sampling recipe, selected by ``kind``:

- ``clip_image``: CLIP ViT-B/32 image tower, one frame per clip (:class:`ClipImageEncoderSpec`);
- ``slowfast``: SlowFast R50 8x8, 32 frames per clip at 30 fps (:class:`SlowFastEncoderSpec`).

New kinds (e.g. an audio encoder) add a spec class here and a member to :data:`VideoEncoderSpec`.
The recipes reproduce ``linjieli222/HERO_Video_Feature_Extractor`` (the extractor of the released
QVHighlights features); ``extraction/README.md`` documents each step with its source.
This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SLOWFAST_MEAN = (0.45, 0.45, 0.45)
SLOWFAST_STD = (0.225, 0.225, 0.225)

GROUP_ALIGNMENT = (
    "every group is cut to the shortest group's clip count (row i of every group is clip i), as the "
    "official dataset loader does before concatenating groups"
)

_RESIZE = (
    "FFmpeg scale filter (swscale, its default bicubic) to short side {size} keeping the aspect ratio: "
    "(W, H) -> (int(W*{size}/H), {size}) when W > H, else ({size}, int(H*{size}/W)), computed from the "
    "displayed (rotation-applied) size; then FFmpeg crop {size}x{size} at (int((w-{size})/2), "
    "int((h-{size})/2)); output rgb24"
)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageNormalization(_Spec):
    """uint8 RGB -> float32: ``(pixel * scale - mean[c]) / (std[c] + std_epsilon)``."""

    scale: float = Field(default=1 / 255, description="Multiplier of the uint8 value (1/255).")
    mean: tuple[float, float, float] = Field(description="Per-channel mean, RGB order.")
    std: tuple[float, float, float] = Field(description="Per-channel std, RGB order.")
    std_epsilon: float = Field(
        default=1e-8, description="Added to std before dividing, as the official Normalize does."
    )


class EncoderWeights(_Spec):
    """Where an encoder's weights came from."""

    file_name: str | None = Field(description="Checkpoint or model directory the ONNX graph was exported from.")
    sha256: str | None = Field(default=None, description="sha256 of that checkpoint file (None for directories).")
    format: str = Field(description="e.g. 'pyslowfast-caffe2-pkl', 'pytorchvideo-pyth', 'huggingface-clip'.")
    untrained: bool = Field(default=False, description="Random weights (demo bundle): features mean nothing.")


class ClipImageEncoderSpec(_Spec):
    """CLIP image tower: one frame per clip -> projected, un-normalised image embedding."""

    kind: Literal["clip_image"] = "clip_image"
    onnx_file: str = Field(default="image_encoder.onnx", description="Bundle file of the image encoder.")
    input_name: str = Field(default="pixel_values", description="float32 (B, 3, image_size, image_size), normalised.")
    output_name: str = Field(
        default="image_embeds", description="float32 (B, dim): visual_projection(pooled output), not L2-normalised."
    )
    dim: int = Field(default=512, gt=0, description="Output width (the group's dim).")
    image_size: int = Field(default=224, gt=0, description="Short side after resizing and the square crop size.")
    normalization: ImageNormalization = Field(
        default=ImageNormalization(mean=CLIP_MEAN, std=CLIP_STD), description="CLIP's mean/std."
    )
    short_video_margin_s: float = Field(
        default=0.1,
        description="Videos shorter than clip_length_s + this margin are decoded at 2/max(int(duration), 1) "
        "fps instead of 1/clip_length_s (the official loader's rule for very short videos).",
    )
    weights: EncoderWeights
    recipe: list[str] = Field(
        default=[
            "decode the first video stream; apply its rotation metadata as the ffmpeg CLI does (autorotate)",
            "FFmpeg fps filter at 1/clip_length_s frames per second (2/max(int(duration),1) for videos shorter "
            "than clip_length_s + short_video_margin_s): frame i is the one shown at i * clip_length_s",
            _RESIZE.format(size=224),
            "pixel/255, minus CLIP mean, divided by (CLIP std + 1e-8); HWC -> CHW",
            "image_encoder.onnx in batches; row i of the group = frame i",
        ],
        description="The steps, in order (extraction/README.md gives the source of each).",
    )
    reference: str = Field(
        default="HERO_Video_Feature_Extractor clip/extract.py, clip/video_loader.py, clip/preprocessing.py",
        description="The official code this recipe reproduces.",
    )


class SlowFastEncoderSpec(_Spec):
    """SlowFast 8x8: clips of ``clip_length_s * decode_fps`` frames -> pooled pathway features."""

    kind: Literal["slowfast"] = "slowfast"
    onnx_file: str = Field(default="slowfast.onnx", description="Bundle file of the SlowFast encoder.")
    input_names: tuple[str, str] = Field(
        default=("slow", "fast"),
        description="float32 slow (B, 3, num_frames/alpha, crop, crop) and fast (B, 3, num_frames, crop, crop).",
    )
    output_name: str = Field(default="features", description="float32 (B, dim).")
    dim: int = Field(default=2304, gt=0, description="Output width (the group's dim).")
    output_layout: str = Field(
        default="concat(slow pathway res5 output averaged over T,H,W (2048), fast pathway res5 output "
        "averaged over T,H,W (256)): the official head's pooled features before its projection layer "
        "(head last_fc=True)",
        description="Which tensor the features are, and the order of the two pathways.",
    )
    slow_dim: int = Field(default=2048, gt=0, description="Width of the slow pathway's part (first).")
    fast_dim: int = Field(default=256, gt=0, description="Width of the fast pathway's part (second).")
    decode_fps: int = Field(default=30, gt=0, description="FFmpeg fps filter rate of the decoded frames.")
    crop_size: int = Field(default=224, gt=0, description="Short side after resizing and the square crop size.")
    num_frames: int = Field(default=32, gt=0, description="Fast pathway frames per clip.")
    sampling_rate: int = Field(default=2, gt=0, description="Frame stride of the official sampling window.")
    alpha: int = Field(default=4, gt=0, description="Slow pathway takes num_frames // alpha of the fast frames.")
    normalization: ImageNormalization = Field(
        default=ImageNormalization(mean=SLOWFAST_MEAN, std=SLOWFAST_STD), description="Kinetics mean/std."
    )
    architecture: dict = Field(default_factory=dict, description="The exported network's configuration.")
    weights: EncoderWeights
    recipe: list[str] = Field(
        default=[
            "decode the first video stream; apply its rotation metadata as the ffmpeg CLI does (autorotate)",
            "FFmpeg fps filter at decode_fps (30)",
            _RESIZE.format(size=224),
            "pad the frame count to a multiple of decode_fps by repeating the last frame, then the seconds to "
            "a multiple of clip_length_s by repeating the last second; cut into clips of "
            "clip_length_s*decode_fps frames; keep the first ceil(duration/clip_length_s) clips",
            "per clip: fps = floor(the stream's average frame rate); window = num_frames*sampling_rate*fps/"
            "decode_fps frames from 0; frame indices = long(clamp(float32 linspace(0, window-1, num_frames), "
            "0, clip_frames-1)) (torch.linspace on the CPU)",
            "pixel/255, minus 0.45, divided by (0.225 + 1e-8); THWC -> CTHW = the fast input",
            "slow input = fast frames at long(float32 linspace(0, num_frames-1, num_frames//alpha))",
            "slowfast.onnx in batches; row i of the group = clip i",
        ],
        description="The steps, in order (extraction/README.md gives the source of each).",
    )
    reference: str = Field(
        default="HERO_Video_Feature_Extractor slowfast/extract_feature/{extract,video_loader,preprocessing}.py, "
        "configs/Kinetics/c2/extract_SLOWFAST_8x8_R50.yaml, slowfast/models/{video_model_builder,head_helper}.py",
        description="The official code this recipe reproduces.",
    )


VideoEncoderSpec = Annotated[ClipImageEncoderSpec | SlowFastEncoderSpec, Field(discriminator="kind")]
