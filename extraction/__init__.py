"""Video file -> per-clip features, torch-free: PyAV decoding through FFmpeg filters, the official sampling, ONNX encoders.

Public API (used by ``trdetr-extract`` and the ingestion workers)::

    from extraction import ExtractionError, VideoProbe, probe_video, Extractor, ExtractedVideo, npz_bytes

    extractor = Extractor(bundle_dir, device="auto", intra_op_threads=0, batch_size=4)
    extractor.missing_groups                 # groups without a bundled encoder (extract refuses them)
    video = extractor.extract(path, max_duration_s=None, progress=None)
    video.groups                             # {"slowfast": (T, 2304), "clip": (T, 512)} float32
    npz_bytes(video)                         # the .npz a features upload takes

The preprocessing, step by step with the official code each step reproduces: ``extraction/README.md``.
"""

from .errors import CODES, ExtractionError
from .pipeline import ExtractedVideo, Extractor, npz_bytes
from .probe import VideoProbe, probe_video

__all__ = ["CODES", "ExtractedVideo", "ExtractionError", "Extractor", "VideoProbe", "npz_bytes", "probe_video"]
