"""`commonspace serve`: the JSON API against `commonspace search --json`, bad input, limits,
media files and path traversal, on a real three-modality index (digits, FSDD, captions)."""

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _serve_data import LiveServer, build_serve_index, free_port
from fastapi.testclient import TestClient

from commonspace.apps.serve import bind_warning, create_app
from commonspace.index import EmbeddingIndex

# One torch thread, as conftest gives this process: MiniLM's float sums then run in the same
# order in the CLI subprocess and in the app, and the scores are bit-identical.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def cli(*args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "commonspace.cli.main", "-q", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def b64(path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_serve_index(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def client(built):
    return TestClient(create_app(built["index"]), raise_server_exceptions=False)


def test_health_names_every_modality_and_query_kind(client):
    answer = client.get("/api/health").json()
    assert answer["status"] == "ok"
    assert answer["modalities"] == {"image": 60, "audio": 30, "text": 40}
    # the model's default space is its class posteriors: one dimension per digit class
    assert answer["ntotal"] == 130 and set(answer["dims"].values()) == {10}
    assert answer["query_kinds"] == ["vector", "text", "image", "audio"]


@pytest.mark.slow
@pytest.mark.parametrize("modality", [None, "audio"])
def test_text_hits_equal_commonspace_search_json(built, client, modality):
    query = "a handwritten seven"
    extra = [] if modality is None else ["--modality", modality]
    code, out, err = cli("search", "--index", built["index"], "--text", query, "-k", "7",
                         "--json", *extra)
    assert code == 0, err
    body = {"text": query, "k": 7} | ({} if modality is None else {"modality": modality})
    response = client.post("/api/search", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == json.loads(out)
    hits = response.json()["hits"]
    assert len(hits) == 7 and [h["rank"] for h in hits] == list(range(1, 8))
    if modality:
        assert {h["modality"] for h in hits} == {modality}


@pytest.mark.slow
def test_vector_hits_equal_commonspace_search_json(built, client):
    vector = built["vectors"]["audio"][4].astype(np.float64)
    literal = ",".join(repr(float(v)) for v in vector)
    code, out, err = cli("search", "--index", built["index"], "--vector", literal, "-k", "12",
                         "--json")
    assert code == 0, err
    response = client.post("/api/search", json={"vector": vector.tolist(), "k": 12})
    assert response.status_code == 200, response.text
    assert response.json() == json.loads(out)
    assert response.json()["hits"][0]["row"] == 60 + 4  # audio rows follow the 60 images


def test_uploaded_image_and_recording_find_themselves(built, client):
    answer = client.post("/api/search", json={"image": b64(built["image_files"][13]),
                                              "k": 3, "modality": "all"}).json()
    assert answer["query"] == "image: upload"
    assert answer["hits"][0]["row"] == 13
    assert answer["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    data_url = "data:audio/wav;base64," + b64(built["audio_files"][7])
    answer = client.post("/api/search", json={"audio": data_url, "k": 2,
                                              "modality": "audio"}).json()
    assert answer["hits"][0]["row"] == 60 + 7
    answer = client.post("/api/search", json={"audio": b64(built["audio_files"][7]), "k": 3,
                                              "modality": "text"}).json()
    assert {h["modality"] for h in answer["hits"]} == {"text"}
    # by default a query leaves its own modality out (as `commonspace search` does)
    answer = client.post("/api/search", json={"image": b64(built["image_files"][13]),
                                              "k": 20}).json()
    assert answer["hits"] and "image" not in {h["modality"] for h in answer["hits"]}


BAD = [
    ('{"text": "a', 400, "malformed JSON"),
    ('{"vector": [1, 2, 3]}', 400, "dimension 3"),
    ('{"vector": [NaN' + ", 1" * 9 + "]}", 400, "NaN"),
    ('{"vector": []}', 400, "empty vector"),
    ('{"vector": ["a"]}', 422, "vector"),
    ('{"text": "   "}', 400, "empty text"),
    ('{"image": ""}', 400, "empty image"),
    ('{"text": "a", "k": 0}', 400, "k must be"),
    ('{"text": "a", "k": -3}', 400, "k must be"),
    ('{"text": "a", "k": 1000000000}', 400, "k must be"),
    ('{"text": "a", "k": "5"}', 422, "k"),
    ('{"text": "a", "modality": "video"}', 400, "unknown modality 'video'"),
    ('{"text": "a", "modality": []}', 400, "modality"),
    ('{"image": "not base64!"}', 400, "not valid base64"),
    ('{"image": "aGVsbG8="}', 400, "not a readable image"),
    ('{"audio": "aGVsbG8="}', 400, "not a readable audio"),
    ("{}", 400, "exactly one query"),
    ('{"text": "a", "vector": [1]}', 400, "exactly one query"),
    ('{"txt": "a"}', 422, "txt"),
    ("[1, 2]", 422, "body"),
    ("\xff\xfe", 400, "malformed JSON"),
]


@pytest.mark.parametrize("body,status,fragment", BAD, ids=[b[0][:24] for b in BAD])
def test_bad_input_gets_a_4xx_that_names_the_problem(client, body, status, fragment):
    response = client.post("/api/search", content=body.encode("utf-8", "surrogateescape")
                           if body != "\xff\xfe" else b"\xff\xfe",
                           headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]
    assert "Traceback" not in response.text


def test_a_query_kind_the_index_cannot_embed(built, tmp_path):
    vectors = built["vectors"]
    index = EmbeddingIndex().add("image", vectors["image"])  # no query embedder at all
    bare = TestClient(create_app(index), raise_server_exceptions=False)
    response = bare.post("/api/search", json={"text": "a seven"})
    assert response.status_code == 400 and "query model" in response.json()["error"]
    loaded = EmbeddingIndex.load(built["index"])
    del loaded.query_embedder.recipes["audio"]  # text and image only
    partial = TestClient(create_app(loaded), raise_server_exceptions=False)
    response = partial.post("/api/search", json={"audio": b64(built["audio_files"][0])})
    assert response.status_code == 400 and "cannot embed audio" in response.json()["error"]


def test_request_bodies_over_the_limit_get_413(built):
    small = TestClient(create_app(built["index"], max_request_mb=0.25))
    body = json.dumps({"text": "x" * 300_000})
    response = small.post("/api/search", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "0.25 MiB" in response.json()["error"]

    def chunks():  # no Content-Length: the limit is counted while the body streams in
        for _ in range(10):
            yield b"x" * 50_000

    response = small.post("/api/search", content=chunks())
    assert response.status_code == 413
    default = TestClient(create_app(built["index"]))
    big = b'{"image": "' + b"A" * (17 * 2**20) + b'"}'
    assert default.post("/api/search", content=big).status_code == 413
    ok = default.post("/api/search", json={"text": "x" * 300_000, "k": 1})
    assert ok.status_code == 200


def test_unexpected_errors_are_500_without_detail(built, monkeypatch):
    app = create_app(built["index"])
    service = app.state.service

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(service.index, "search", broken)
    response = TestClient(app, raise_server_exceptions=False).post(
        "/api/search", json={"vector": [1.0] * 10})
    assert response.status_code == 500
    assert response.json() == {"error": "internal server error"}


def test_media_serves_only_the_registered_image_and_audio_files(built, client):
    response = client.get("/api/items/13/media")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == Path(built["image_files"][13]).read_bytes()
    response = client.get("/api/items/67/media")
    assert response.status_code == 200 and "audio" in response.headers["content-type"]
    assert response.content == Path(built["audio_files"][7]).read_bytes()
    for row in ("90", "129", "130", "999999999999", "-1", "abc", "1.0", "0x1", " 1"):
        response = client.get(f"/api/items/{row}/media")
        assert response.status_code == 404, row
        assert "error" in response.json()


def test_a_registered_source_that_is_not_media_is_not_served(built, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    index = EmbeddingIndex().add("text", built["vectors"]["text"][:3],
                                 sources=[str(secret), str(built["index"] / "index.json"),
                                          str(tmp_path / "gone.png")])
    bare = TestClient(create_app(index))
    for row in range(3):
        response = bare.get(f"/api/items/{row}/media")
        assert response.status_code == 404 and b"do not serve" not in response.content


TRAVERSALS = [
    "/api/items/../../../../etc/passwd",
    "/api/items/..%2f..%2f..%2f..%2fetc%2fpasswd/media",
    "/api/items/%2e%2e%2f%2e%2e%2fetc%2fpasswd/media",
    "/api/items/0/../../../../etc/passwd",
    "/api/items/0/media/../../../../etc/passwd",
    "/api/items/%2fetc%2fpasswd/media",
    "/api/items/0%00/media",
    "/api/items/%EF%BC%91/media",  # a full-width digit one
    "/static/../serve.py",
    "/static/..%2fserve.py",
    "/static/%2e%2e/%2e%2e/index/store.py",
    "/static/%2e%2e%2f%2e%2e%2findex%2fstore.py",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/..\\serve.py",
    "/static/",
    "/../../../../etc/passwd",
    "//etc/passwd",
]


@pytest.fixture(scope="module")
def live(built):
    with LiveServer(create_app(built["index"])) as url:
        yield url


def raw_get(url: str, target: str) -> tuple[int, bytes]:
    """A GET with the request target sent byte for byte (no client-side normalisation)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                     .encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("target", TRAVERSALS)
def test_path_traversal_gets_404_and_no_file(live, target):
    status, body = raw_get(live, target)
    assert status == 404, (target, status)
    assert b"root:" not in body and b"import" not in body and b"commonspace" not in body


def test_live_server_answers_the_page_and_its_assets(live):
    status, page = raw_get(live, "/?q=a+seven&modality=audio&k=3")
    assert status == 200 and b'src="/static/app.js"' in page
    for asset in ("/static/app.js", "/static/style.css", "/docs", "/openapi.json"):
        assert raw_get(live, asset)[0] == 200, asset
    for own in ("/", "/static/app.js", "/static/style.css"):  # no asset from elsewhere (no CDN)
        assert b"://" not in raw_get(live, own)[1], own


def test_bind_warning_only_off_loopback():
    assert bind_warning("127.0.0.1") is None and bind_warning("localhost") is None
    assert bind_warning("::1") is None
    assert "0.0.0.0" in bind_warning("0.0.0.0") and "authentication" in bind_warning("0.0.0.0")


@pytest.mark.slow
def test_the_serve_command(built, tmp_path):
    code, _, err = cli("serve", "--index", tmp_path / "none")
    assert code == 3 and "no index at" in err and "Traceback" not in err
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "commonspace.cli.main", "serve", "--index",
                             str(built["index"]), "--port", str(port)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health") as r:
                    assert json.load(r)["ntotal"] == 130
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline
                time.sleep(0.3)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/search",
                                         data=b'{"text": "the number two", "k": 2}',
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request) as r:
            assert len(json.load(r)["hits"]) == 2
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}/" in out and "warning" not in out.lower()
