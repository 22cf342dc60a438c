"""Checkpoint -> ONNX model bundle (``trdetr-export``): export, fp16, text encoder, parity gates.

Public API::

    export_bundle(checkpoint, out_dir, *, fp16=False, text_encoder_dir=None, opset=None,
                  video_groups=None, fixtures_dir=None, num_random_cases=50, run_parity=True) -> Manifest
    verify_bundle(bundle_dir, checkpoint=None, fixtures_dir=None) -> report dict
"""

from .bundle import VerificationError, export_bundle, verify_bundle
from .layouts import LayoutError, parse_audio_groups, parse_video_groups
from .onnx_export import ExportError
from .parity import ParityError, Thresholds
from .text_encoder import TextEncoderError

__all__ = [
    "ExportError",
    "LayoutError",
    "ParityError",
    "TextEncoderError",
    "Thresholds",
    "VerificationError",
    "export_bundle",
    "parse_audio_groups",
    "parse_video_groups",
    "verify_bundle",
]
