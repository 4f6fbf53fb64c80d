"""A whole session from the command line (issue 17's "done when"): real FSDD audio, the
bundled MiniLM and the demo's digits and captions go through

    embed -> train -> transform -> fuse -> eval -> index (query recipe) -> search

as subprocesses in one working directory, with no Python between the commands: every command
reads what an earlier one wrote. Then every output is checked against the Python API on the
same files. README's command-line section is ``SESSION``, copied from here.

Before the first command, :func:`prepare` lays out the data a user would bring: the FSDD
recordings split into two folders by the upstream rule (index 0-4 of each digit and speaker is
the test set, as symbolic links), the scikit-learn digits as ``(n, 8, 8)`` pixel rows with one
label per line, one templated caption per digit image (the digits demo's
``digit_captions``), the same train/test rule as the demo (image ``i`` is test when
``i % 5 == 0``), and one test image of a seven as a PNG query.

The run takes about three minutes on the shared 2-core machine (most of it MiniLM and the
fresh interpreters each command starts).
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

SESSION = r"""
commonspace embed --audio data/fsdd_train --label-regex '^(\d+)_' --out emb/audio_train
commonspace embed --audio data/fsdd_test --label-regex '^(\d+)_' --out emb/audio_test
commonspace embed --model st:all-MiniLM-L6-v2 --texts data/captions_train.txt --out emb/text_train
commonspace embed --model st:all-MiniLM-L6-v2 --texts data/captions_test.txt --out emb/text_test
commonspace train --modality audio=emb/audio_train image=data/digits_train.npy text=emb/text_train --labels audio=emb/audio_train image=data/digits_train_labels.txt text=data/captions_train_labels.txt --window audio=5 image=3 --dim 64 --max-iter 15 --out model/
commonspace transform --model model/ --input emb/audio_test --modality audio --out space/audio
commonspace transform --model model/ --input data/digits_test.npy --modality image --out space/image.npy
commonspace transform --model model/ --input emb/text_test --modality text --out space/text
commonspace fuse --cross space/text --expert emb/text_test --modality text --fuser fuser.npz --out fused/text
commonspace fuse --cross space/image.npy --modality image --fuser fuser.npz --out fused/image.npy
commonspace eval --embeddings cnn:audio=space/audio cnn:image=space/image.npy cnn:text=space/text fused:image=fused/image.npy fused:text=fused/text minilm:text=emb/text_test --labels audio=emb/audio_test image=data/digits_test_labels.txt text=data/captions_test_labels.txt --tasks retrieval --out report/
commonspace index --embeddings space/audio image=space/image.npy space/text --labels image=data/digits_test_labels.txt --query-model text=st:all-MiniLM-L6-v2 audio=mfcc image=pixels:8x8 --query-transform model/ --out idx/
commonspace search --index idx/ --text "a handwritten seven" -k 5 --json
commonspace search --index idx/ --audio data/fsdd_test/7_jackson_0.wav -k 5 --json
commonspace search --index idx/ --image data/seven.png -k 5 --json
""".strip().splitlines()

# the session's environment: none of the hub's switches (the command line is offline itself)
ENV = {k: v for k, v in os.environ.items()
       if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "COMMONSPACE_OFFLINE")}
ENV.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", TQDM_DISABLE="1")


def prepare(work: Path) -> None:
    """The data the session starts from (see the module docstring)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from commonspace.apps.demo import digit_captions, test_mask
    from commonspace.data import list_fsdd

    data = work / "data"
    for part in ("fsdd_train", "fsdd_test"):
        (data / part).mkdir(parents=True)
    for entry in list_fsdd():
        path = Path(entry["path"])
        part = "fsdd_test" if int(path.stem.split("_")[2]) < 5 else "fsdd_train"
        os.symlink(path, data / part / path.name)
    digits = load_digits()
    pixels, y = digits.images.astype(np.float32), digits.target
    test = test_mask(len(y))
    captions = np.array(digit_captions(y, 0))
    for name, rows in (("train", ~test), ("test", test)):
        np.save(data / f"digits_{name}.npy", pixels[rows])
        labels = "\n".join(map(str, y[rows])) + "\n"
        (data / f"digits_{name}_labels.txt").write_text(labels)
        (data / f"captions_{name}.txt").write_text("\n".join(captions[rows]) + "\n")
        (data / f"captions_{name}_labels.txt").write_text(labels)
    seven = int(np.flatnonzero(test & (y == 7))[0])
    Image.fromarray(np.round(pixels[seven] * 255 / 16).astype(np.uint8)).save(data / "seven.png")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Run every command of SESSION in order; ``{command line: stdout}``."""
    work = tmp_path_factory.mktemp("session")
    prepare(work)
    outputs = {}
    for line in SESSION:
        argv = shlex.split(line)
        assert argv[0] == "commonspace"
        proc = subprocess.run([sys.executable, "-m", "commonspace.cli.main", *argv[1:]],
                              cwd=work, env=ENV, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr
        outputs[line] = proc.stdout
    return work, outputs


def step(outputs, prefix):
    """The stdout of the one command line that starts with ``prefix``."""
    found = [out for line, out in outputs.items() if line.startswith(prefix)]
    assert len(found) == 1, prefix
    return found[0]


@pytest.mark.slow
def test_embed_wrote_mfcc_sequences_and_minilm_vectors(session):
    from commonspace.encoders import load_encoder
    from commonspace.readers import read_embeddings, read_labels, read_sequences

    work, _ = session
    seqs = read_sequences(work / "emb/audio_test", flag="audio")
    labels = read_labels(work / "emb/audio_test", flag="audio")
    assert len(seqs) == 300 and sorted(set(labels.tolist())) == list(range(10))
    files = sorted((work / "data/fsdd_test").glob("*.wav"))[:3]
    for got, want in zip(seqs, load_encoder("mfcc").encode_audio([str(f) for f in files]),
                         strict=False):
        np.testing.assert_allclose(got, want, atol=1e-5)
    text = read_embeddings(work / "emb/text_test", flag="text")
    captions = (work / "data/captions_test.txt").read_text().splitlines()
    np.testing.assert_allclose(
        text[:5], load_encoder("st:all-MiniLM-L6-v2").encode_texts(captions[:5]), atol=1e-5)


@pytest.mark.slow
def test_train_wrote_a_model_that_beats_semantic_matching(session):
    from commonspace import CrossModelCNN

    work, outputs = session
    summary = json.loads(step(outputs, "commonspace train").strip().splitlines()[-1])
    assert summary["iterations"] == 15
    assert summary["validation"]["model"] > summary["validation"]["scm"]
    model = CrossModelCNN.load(work / "model/model.pt")
    assert model.modalities_ == ["audio", "image", "text"]
    assert model.window_ == {"audio": 5, "image": 3, "text": 1}
    assert model.space_ == "posterior" and len(model.classes_) == 10


@pytest.mark.slow
@pytest.mark.parametrize("modality, source, out", [
    ("audio", "emb/audio_test", "space/audio"),
    ("image", "data/digits_test.npy", "space/image.npy"),
    ("text", "emb/text_test", "space/text"),
])
def test_transform_equals_the_models_transform(session, modality, source, out):
    from commonspace import CrossModelCNN
    from commonspace.readers import read_embeddings, read_sequences

    work, _ = session
    model = CrossModelCNN.load(work / "model/model.pt")
    expected = model.transform(read_sequences(work / source, flag=source), modality=modality)
    np.testing.assert_allclose(read_embeddings(work / out, flag=out), expected, atol=1e-6)


@pytest.mark.slow
def test_transformed_folders_keep_ids_labels_and_texts(session):
    work, _ = session
    meta = pq.read_table(work / "space/text/metadata.parquet").to_pydict()
    captions = (work / "data/captions_test.txt").read_text().splitlines()
    assert meta["text"] == captions and set(meta["modality"]) == {"text"}
    audio = pq.read_table(work / "space/audio/metadata.parquet").to_pydict()
    assert audio["label"][:3] == ["0", "0", "0"] and audio["id"][0].endswith(".wav")


@pytest.mark.slow
def test_fuse_equals_the_saved_fuser(session):
    from commonspace import KrossFuse
    from commonspace.readers import read_embeddings

    work, _ = session
    fuser = KrossFuse.load(work / "fuser.npz")
    read = lambda p: read_embeddings(work / p, flag=p)  # noqa: E731
    np.testing.assert_allclose(
        read("fused/text"),
        fuser.transform("text", cross=read("space/text"), expert=read("emb/text_test")),
        atol=1e-5)
    np.testing.assert_allclose(read("fused/image.npy"),
                               fuser.transform("image", cross=read("space/image.npy")),
                               atol=1e-5)


@pytest.mark.slow
def test_eval_equals_the_metrics_api(session):
    from commonspace.metrics import mean_average_precision
    from commonspace.metrics.suite import stratified_split
    from commonspace.readers import read_embeddings, read_labels

    work, _ = session
    results = json.loads((work / "report/results.json").read_text())
    x = {m: read_embeddings(work / p, flag=p) for m, p in
         (("audio", "space/audio"), ("image", "space/image.npy"), ("text", "space/text"))}
    y = {"audio": read_labels(work / "emb/audio_test", flag="audio"),
         "image": read_labels(work / "data/digits_test_labels.txt", flag="image"),
         "text": read_labels(work / "data/captions_test_labels.txt", flag="text")}
    test = {m: stratified_split(y[m], 0.3, 0)[1] for m in y}
    for a, b in (("audio", "image"), ("image", "audio"), ("text", "audio")):
        expected = mean_average_precision(x[a][test[a]], x[b][test[b]], y[a][test[a]],
                                          y[b][test[b]])
        assert results["cnn"]["retrieval"][f"{a}_to_{b} mAP"] == pytest.approx(expected,
                                                                                abs=1e-9)
    # the learned space against the raw MiniLM text baseline, rows side by side
    assert "text_to_text mAP" in results["minilm"]["retrieval"]
    assert results["cnn"]["retrieval"]["audio_to_image mAP"] > 0.5  # chance is about 0.1
    table = (work / "report/results.md").read_text()
    assert "| cnn | fused | minilm |" in table


def test_readme_shows_this_session():
    """README's command-line section is SESSION, line for line, in this order."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    positions = [readme.find(line + "\n") for line in SESSION]
    assert -1 not in positions, [ln for ln, p in zip(SESSION, positions, strict=True) if p < 0]
    assert positions == sorted(positions)


def _python_search(work, vector, kind):
    from commonspace.index import EmbeddingIndex

    index = EmbeddingIndex.load(work / "idx")
    return index.search(vector, k=5, query_modality=kind).hits(0)


@pytest.mark.slow
def test_search_equals_the_python_api(session):
    from commonspace import CrossModelCNN
    from commonspace.encoders import load_encoder
    from commonspace.index import read_pixels

    work, outputs = session
    model = CrossModelCNN.load(work / "model/model.pt")
    text = load_encoder("st:all-MiniLM-L6-v2").encode_texts(["a handwritten seven"])
    audio = load_encoder("mfcc").encode_audio([str(work / "data/fsdd_test/7_jackson_0.wav")])
    queries = {
        "--text": ("text", model.transform(text[:, None, :], modality="text")),
        "--audio": ("audio", model.transform(audio, modality="audio")),
        "--image": ("image", model.transform(read_pixels([str(work / "data/seven.png")]),
                                             modality="image")),
    }
    for flag, (kind, vector) in queries.items():
        hits = json.loads(step(outputs, f"commonspace search --index idx/ {flag}"))["hits"]
        expected = _python_search(work, vector, kind)
        assert [h["row"] for h in hits] == [h["row"] for h in expected], flag
        assert [h["score"] for h in hits] == pytest.approx([h["score"] for h in expected],
                                                           abs=1e-5)
        assert kind not in {h["modality"] for h in hits}  # the query's own modality left out
        assert sum(str(h["label"]) == "7" for h in hits) >= 4, hits  # sevens find sevens
