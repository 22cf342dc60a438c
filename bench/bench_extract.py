"""Benchmark: feature extraction speed as seconds of video per second of wall time, per stage and end to end.

Builds (once, cached in ``--work-dir``) a bundle with the *real-size* encoders and random weights: CLIP
ViT-B/32's image tower (12 layers, width 768, 224x224, 512-d projection) and SlowFast R50 8x8 (2304-d),
exported by ``export_bundle`` as ``trdetr-export --clip --slowfast`` does. Then, on one synthetic video
(``--seconds`` at ``--size`` and ``--fps``, H.264), in one run so the ratios are comparable on a noisy machine:

- ``decode``: PyAV decoding + both FFmpeg filter chains (30 fps and 0.5 fps, scale, crop), no encoder;
- ``clip``: the image encoder alone on one frame per 2 s, per batch size;
- ``slowfast``: the SlowFast encoder alone on 32 + 8 frames per 2-s clip, per batch size;
- ``full``: ``Extractor.extract`` (decode + sampling + both encoders), per batch size.

Each stage reports video seconds / wall seconds (>= 1 means faster than real time) and video seconds /
CPU seconds of this process (all threads): on a shared machine the wall figure depends on the other
load (the load average is printed), the CPU one much less; ``2 x`` the CPU figure is what the 2 cores
would give if nothing else ran.

    .venv/bin/python bench/bench_extract.py --seconds 60 --batch-sizes 1 4

Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extraction import Extractor, probe_video  # noqa: E402
from extraction.decode import ChainDecoder  # noqa: E402
from trdetr_common.manifest import Manifest  # noqa: E402


def build_bundle(work_dir: Path) -> Path:
    """Tiny TR-DETR + real-size random CLIP image tower and SlowFast R50, exported without parity gates."""
    bundle = work_dir / "bundle"
    if (bundle / "manifest.json").exists():
        return bundle
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from model_export.checkpoint import save_checkpoint
    from model_export.config import TRDETRConfig
    from model_export.export import export_bundle, parse_video_groups
    from model_export.model import build_model
    from model_export.slowfast import R50_8X8, LoadedSlowFast, SlowFast, init_random_

    torch.manual_seed(0)
    config = TRDETRConfig(v_feat_dim=2818, t_feat_dim=512, enc_layers=1, dec_layers=1, dim_feedforward=64)
    checkpoint = save_checkpoint(work_dir / "tiny.ckpt", build_model(config).eval(), config)
    clip_dir = work_dir / "clip-vit-b32-random"
    CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=512)).eval().save_pretrained(clip_dir)
    slowfast = LoadedSlowFast(init_random_(SlowFast(R50_8X8)), "random R50 8x8", None, "random-init")
    export_bundle(checkpoint, bundle, video_groups=parse_video_groups("slowfast:2304,clip:512"), run_parity=False,
                  image_encoder_dir=clip_dir, slowfast=slowfast, progress=True)
    return bundle


def write_video(path: Path, seconds: float, fps: int, width: int, height: int) -> Path:
    """Moving colour blocks, H.264 (x264 'veryfast'), yuv420p."""
    if path.exists():
        return path
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast"}
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(int(seconds * fps)):
            image = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, np.full_like(xx, (5 * i) % 256)], -1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``work()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_decode(video: Path, extractor: Extractor) -> tuple[float, float]:
    probe = probe_video(video)
    chains = {name: enc.chain(probe, extractor.clip_length_s) for name, enc in extractor.encoders.items()}
    return timed(lambda: sum(1 for _ in ChainDecoder(probe, chains)))


def bench_encoder(extractor: Extractor, group: str, samples: int, batch: int) -> tuple[float, float]:
    """(wall, CPU) seconds per input (one clip) through one encoder, over about ``samples`` inputs in batches of ``batch``."""
    encoder = extractor.encoders[group]
    spec = encoder.spec
    rng = np.random.default_rng(0)
    if group == "clip":
        one = {spec.input_name: rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)}
    else:
        one = {spec.input_names[0]: rng.standard_normal((batch, 3, 8, 224, 224), dtype=np.float32),
               spec.input_names[1]: rng.standard_normal((batch, 3, 32, 224, 224), dtype=np.float32)}
    encoder.model.run(one)  # warm-up
    runs = max(1, samples // batch)
    wall, cpu = timed(lambda: [encoder.model.run(one) for _ in range(runs)])
    return wall / (runs * batch), cpu / (runs * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_extract")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the test video")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = one per core)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    bundle = build_bundle(args.work_dir)
    video = write_video(args.work_dir / f"bench_{args.seconds:g}s_{args.size}_{args.fps}.mp4", args.seconds, args.fps, width, height)
    clip_len = Manifest.load(bundle).preprocessing.clip_length_s
    clips = int(np.ceil(args.seconds / clip_len))
    rows = []
    extractor = Extractor(bundle, device=args.device, intra_op_threads=args.threads, batch_size=args.batch_sizes[0])
    print(f"providers: {extractor.providers}; video {video.name}: {args.seconds:g} s, {clips} clips; "
          f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    wall, cpu = bench_decode(video, extractor)
    rows.append(("decode + filters (both chains)", "-", args.seconds / wall, args.seconds / cpu))
    for batch in args.batch_sizes:
        for group, name, samples in (("clip", "clip image encoder", clips), ("slowfast", "slowfast encoder", 8)):
            wall, cpu = bench_encoder(extractor, group, samples, batch)
            rows.append((name, batch, clip_len / wall, clip_len / cpu))
    for batch in args.batch_sizes:
        extractor = Extractor(bundle, device=args.device, intra_op_threads=args.threads, batch_size=batch)
        result: dict = {}
        wall, cpu = timed(lambda ex=extractor, out=result: out.setdefault("video", ex.extract(video)))
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in result["video"].timings_s.items())
        rows.append((f"full pipeline ({stages})", batch, args.seconds / wall, args.seconds / cpu))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print("\n| stage | batch | video s / wall s | video s / CPU s |\n| --- | ---: | ---: | ---: |")
    for stage, batch, speed, cpu_speed in rows:
        print(f"| {stage} | {batch} | {speed:.2f} | {cpu_speed:.2f} |")


if __name__ == "__main__":
    main()
