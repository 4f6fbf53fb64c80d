"""Load on `commonspace serve` over loopback, against the same searches called in-process.

Index (real data, exact cosine): 500 COCO CLIP image and 500 caption vectors (512-d, modalities
"image" and "text"), and the 1,797 captions of the demo's digits embedded by all-MiniLM-L6-v2
(384-d, modality "caption"; the index's query model is MiniLM). Queries:

- vector: the 500 COCO caption vectors as JSON lists (searched over image + text);
- text: 100 distinct captions ("someone wrote a three", ...) embedded by the server.

The server runs as `commonspace serve` in a subprocess (one worker, 127.0.0.1, free port).
``--clients`` threads each send ``--requests`` requests of each kind over one keep-alive
connection, all at once; latency is measured per request by the client. The reference is
``EmbeddingIndex.search`` / ``search_query`` called in this process, one query at a time, on
the same index folder. Any non-200 answer or a hit list that differs from the in-process one
counts as an error. Absolute times depend on the machine; the ratios are from one run.

    python benchmarks/bench_serve.py                      # 8 clients x 200 requests per kind
    python benchmarks/bench_serve.py --clients 4 --requests 50
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"  # loopback only


def build_index(folder: Path) -> tuple[list, list]:
    from sklearn.datasets import load_digits

    from commonspace.apps.demo import CAPTION_TEMPLATES, NUMBER_WORDS, digit_captions
    from commonspace.data import load_coco_clip_pairs
    from commonspace.encoders import load_encoder
    from commonspace.index import EmbeddingIndex, QueryEmbedder

    img, txt = load_coco_clip_pairs()
    captions = digit_captions(load_digits().target, random_state=0)
    encoder = load_encoder("st:all-MiniLM-L6-v2")
    unique = sorted(set(captions))
    table = encoder.encode_texts(unique)
    caption_vectors = table[[unique.index(c) for c in captions]]
    index = EmbeddingIndex()
    index.add("image", img, ids=[f"coco-image-{i}" for i in range(len(img))])
    index.add("text", txt, ids=[f"coco-caption-{i}" for i in range(len(txt))])
    index.add("caption", caption_vectors, sources=captions)
    index.query_embedder = QueryEmbedder.from_encoder("st:all-MiniLM-L6-v2", kinds=("text",))
    index.save(folder)
    texts = [t.format(word=NUMBER_WORDS[d], digit=d) for t in CAPTION_TEMPLATES
             for d in range(10)]
    return [v.astype(np.float64).tolist() for v in txt], texts[:100]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(folder: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "commonspace.cli.main", "-q", "serve",
                             "--index", str(folder), "--host", HOST, "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while True:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", "/api/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.3)


def in_process(folder: Path, kind: str, queries: list, k: int, n: int):
    """Latencies (s) of ``n`` sequential in-process searches, and their hit rows by query."""
    from commonspace.index import EmbeddingIndex

    index = EmbeddingIndex.load(folder)
    index.query_embedder.load_models()
    expected, times = {}, []
    for q in queries[:5]:  # warm-up, not timed
        index.search(np.asarray(q)[None, :], k=k) if kind == "vector" else \
            index.search_query(q, "text", k=k)
    for i in range(n):
        q = queries[i % len(queries)]
        t0 = time.perf_counter()
        if kind == "vector":
            res = index.search(np.asarray(q)[None, :], k=k)
        else:
            res = index.search_query(q, "text", k=k)
        times.append(time.perf_counter() - t0)
        expected[i % len(queries)] = [h["row"] for h in res.hits(0)]
    return np.array(times), expected


def load(port: int, kind: str, queries: list, k: int, clients: int, requests: int, expected):
    latencies = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def client(c):
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        bodies = [(j, json.dumps({kind: queries[j], "k": k}))
                  for j in ((c * requests + r) % len(queries) for r in range(requests))]
        barrier.wait()
        for j, body in bodies:
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/api/search", body, {"content-type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                ok = response.status == 200 and [
                    h["row"] for h in json.loads(data)["hits"]] == expected[j]
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
            latencies[c].append(time.perf_counter() - t0)
            errors[c] += not ok
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return np.concatenate([np.array(x) for x in latencies]), sum(errors), wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="per client and query kind")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        folder = Path(tmp) / "index"
        vectors, texts = build_index(folder)
        port = free_port()
        server = start_server(folder, port)
        try:
            rows = []
            total_errors = 0
            for kind, queries in (("vector", vectors), ("text", texts)):
                # every query the clients send gets its in-process reference
                ref, expected = in_process(folder, kind, queries, args.k, len(queries))
                load(port, kind, queries, args.k, 2, 5, expected)  # warm-up
                lat, errors, wall = load(port, kind, queries, args.k, args.clients,
                                         args.requests, expected)
                total_errors += errors
                rows.append((kind, ref, lat, errors, wall))
        finally:
            server.terminate()
            server.wait(30)
    n = args.clients * args.requests
    print(f"commonspace serve on {HOST}, 1 worker; {args.clients} clients x {args.requests} "
          f"requests per kind (k={args.k}); in-process: one query at a time")
    print(f"{'query':<7} {'in-process p50 ms':>17} {'p99':>7} {'q/s':>8} | {'served p50 ms':>13} "
          f"{'p99':>7} {'req/s':>8} {'errors':>6} | {'p50 x':>6} {'throughput x':>12}")
    for kind, ref, lat, errors, wall in rows:
        ref_rate = 1 / ref.mean()
        rate = n / wall
        print(f"{kind:<7} {np.median(ref) * 1e3:>17.2f} {np.percentile(ref, 99) * 1e3:>7.2f} "
              f"{ref_rate:>8.0f} | {np.median(lat) * 1e3:>13.2f} "
              f"{np.percentile(lat, 99) * 1e3:>7.2f} {rate:>8.0f} {errors:>6d} | "
              f"{np.median(lat) / np.median(ref):>6.1f} {rate / ref_rate:>12.2f}")
    print("p50 x: served p50 latency / in-process p50 (the server's overhead, with "
          f"{args.clients} requests in flight); throughput x: served req/s / in-process q/s")
    print(f"errors: {total_errors} of {2 * n} requests")
    return 1 if total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
