"""A small real index of three modalities in one learned space, for the service's tests.

- image: 60 of scikit-learn's handwritten digits (6 per class), written as 8x8 grey PNG files
  (their sources, so the service can show them);
- audio: 30 FSDD recordings of the speaker "jackson" (digits 0-9, takes 0-2), sources = the
  .wav files in the shared data;
- text: 40 captions of the demo's templates (4 per digit), embedded by all-MiniLM-L6-v2.

A cross-model CNN (16-d, 20 ADMM iterations, a few seconds) puts the three into one space; the
saved query embedder reaches it from a text (MiniLM -> CNN), an image file (8x8 pixels -> CNN)
or a recording (MFCC -> CNN). Run as a script to build it into a folder:
``python tests/_serve_data.py /tmp/serve_index``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

TEXT_MODEL = "st:all-MiniLM-L6-v2"


def build_serve_index(folder) -> dict:
    """Write the index to ``folder/index`` (images to ``folder/images``); return a dict with
    ``index`` (its path), ``vectors`` {modality: (n, 16) float32 rows as indexed},
    ``image_files``, ``audio_files`` and ``captions``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from commonspace import CrossModelCNN
    from commonspace.apps.demo import digit_captions
    from commonspace.data import list_fsdd
    from commonspace.encoders import load_encoder
    from commonspace.index import EmbeddingIndex, QueryEmbedder

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rows = np.concatenate([np.flatnonzero(digits.target == c)[:6] for c in range(10)])
    pixels, y_image = digits.images[rows].astype(np.float32), digits.target[rows]
    image_files = []
    for i, r in enumerate(rows):
        path = folder / "images" / f"digit-{r}.png"
        Image.fromarray(np.round(pixels[i] * 255 / 16).astype(np.uint8)).save(path)
        image_files.append(str(path))
    recs = [r for r in list_fsdd() if r["speaker"] == "jackson" and r["index"] < 3]
    audio_files = [str(r["path"]) for r in recs]
    y_audio = np.array([r["digit"] for r in recs])
    audio = load_encoder("mfcc").encode_audio(audio_files)
    y_text = np.repeat(np.arange(10), 4)
    captions = digit_captions(y_text, random_state=0)
    encoder = load_encoder(TEXT_MODEL)
    text = encoder.encode_texts(captions)

    model = CrossModelCNN(dim=16, window={"image": 3, "audio": 3, "text": 1}, pad_short=True,
                          activation="tanh", max_iter=20, random_state=0)
    model.fit({"image": pixels, "audio": audio, "text": text[:, None, :]},
              labels={"image": y_image, "audio": y_audio, "text": y_text})
    # the image rows are embedded from the PNG files, exactly as an image query is
    from commonspace.index import read_pixels

    vectors = {"image": model.transform(read_pixels(image_files), modality="image"),
               "audio": model.transform(audio, modality="audio"),
               "text": model.transform(text[:, None, :], modality="text")}
    index = EmbeddingIndex(info={"space": "cross-model CNN, digits + FSDD + captions"})
    index.add("image", vectors["image"], ids=[f"digit-{r}" for r in rows], sources=image_files,
              labels=y_image)
    index.add("audio", vectors["audio"], ids=[Path(p).stem for p in audio_files],
              sources=audio_files, labels=y_audio)
    index.add("text", vectors["text"], ids=[f"caption-{i}" for i in range(len(captions))],
              sources=captions, labels=y_text)
    index.query_embedder = QueryEmbedder({
        "text": {"steps": [{"op": "encoder", "model": TEXT_MODEL}, {"op": "sequence"},
                           {"op": "transform", "object": "cnn", "modality": "text"}]},
        "image": {"steps": [{"op": "pixels", "size": [8, 8], "scale": 16.0},
                            {"op": "transform", "object": "cnn", "modality": "image"}]},
        "audio": {"steps": [{"op": "encoder", "model": "mfcc"},
                            {"op": "transform", "object": "cnn", "modality": "audio"}]},
    }, {"cnn": model})
    index.save(folder / "index")
    return {"index": folder / "index", "vectors": vectors, "image_files": image_files,
            "audio_files": audio_files, "captions": captions}


if __name__ == "__main__":
    built = build_serve_index(sys.argv[1] if len(sys.argv) > 1 else "serve_example")
    print(built["index"])


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """An app served by uvicorn on a free loopback port, in a thread: ``with LiveServer(app) as
    url: ...`` (``url`` like ``http://127.0.0.1:PORT``)."""

    def __init__(self, app):
        self.app = app

    def __enter__(self) -> str:
        import socket
        import threading
        import time

        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
