"""Captions of covers and video frames joining the item text, with a tiny image-to-text model (random weights, built
and saved here: nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from test_video import scenes, write_video
from test_video_cli import tiny_models  # noqa: F401  (autouse: fake timm image model, fake text model)

from cli_run import run
from genrec.content import VideoConfig, caption_items, captioner, encode_catalog, sample_frames
from genrec.content.caption import join_captions
from genrec.errors import ConfigError

transformers = pytest.importorskip("transformers")
WORDS = ["[PAD]", "[BOS]", "[EOS]", "a", "red", "blue", "green", "square", "cat", "dog", "on", "beach"]


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory) -> Path:
    """A ViT encoder + GPT-2 decoder (VisionEncoderDecoderModel) with a 12-word vocabulary, saved with its image
    processor and tokenizer like a model folder from the hub. Special tokens are suppressed, so every caption
    has max_new_tokens words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("captioner")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]",
                                         eos_token="[EOS]").save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    enc = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32)
    dec = transformers.GPT2Config(vocab_size=len(WORDS), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                  add_cross_attention=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    torch.manual_seed(0)
    model = transformers.VisionEncoderDecoderModel(config=config)
    model.generation_config.suppress_tokens = [0, 1, 2]
    model.save_pretrained(folder)
    return folder


def solid(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (40, 30), colour)


def test_transformers_captioner_writes_text_from_images(tiny_captioner):
    cap = captioner(str(tiny_captioner))
    images = [solid((0, 0, 0)), solid((128, 128, 128)), solid((255, 255, 255))]
    texts = cap.caption(images)
    assert len(texts) == 3 and all(len(t.split()) == 30 and set(t.split()) <= set(WORDS[3:]) for t in texts)
    assert len(set(texts)) > 1  # the caption depends on the image
    assert cap.caption(images[::-1]) == texts[::-1]  # greedy: deterministic
    assert captioner(str(tiny_captioner)).key == cap.key != captioner(str(tiny_captioner.parent)).key
    with pytest.raises(ConfigError, match="caption model .*cannot load it"):
        captioner(str(tiny_captioner.parent / "missing")).caption(images)


def test_captions_of_covers_and_frames_join_the_text_and_are_cached(tiny_captioner, tmp_path, fake_text,
                                                                    fake_image, monkeypatch):
    solid((220, 30, 30)).save(tmp_path / "a.png")
    solid((30, 30, 220)).save(tmp_path / "b.png")
    clip = write_video(tmp_path / "c.mp4", scenes([(30, 200, 30)]))
    cat = pa.table({"item": ["a", "b", "c", "d"], "title": ["first", None, "third", "fourth"],
                    "cover": ["a.png", "b.png", None, None], "clip": [None, None, "c.mp4", None]})
    kw = dict(text_model=fake_text, image_model=fake_image, image_col="cover", video_col="clip",
              image_root=tmp_path, video_root=tmp_path, caption_model=str(tiny_captioner), show_progress=False)
    emb = encode_catalog(catalog=cat, **kw)
    cap = captioner(str(tiny_captioner))
    a, b = cap.caption([Image.open(tmp_path / "a.png").convert("RGB"), Image.open(tmp_path / "b.png").convert("RGB")])
    c = cap.caption([sample_frames(clip, VideoConfig())[4]])[0]  # the middle one of 8 sampled frames
    assert sorted(fake_text.seen) == sorted([f"title: first; caption: {a}", f"caption: {b}",
                                             f"title: third; caption: {c}", "title: fourth"])
    rep = emb.meta["report"]["captions"]
    assert (rep["items_with_caption"], rep["captioned"], rep["without_picture"], rep["failed"]) == (3, 3, 1, 0)

    def no_model(self, images):
        raise AssertionError("a cached caption was computed again")

    monkeypatch.setattr("genrec.content.caption.TransformersCaptioner.caption", no_model)
    again = encode_catalog(catalog=cat, **kw)
    assert again.meta["report"]["captions"]["from_cache"] == 3
    np.testing.assert_array_equal(again.vectors, emb.vectors)


def test_callable_captioners_and_unreadable_pictures(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    solid((1, 2, 3)).save(tmp_path / "ok.png")

    def pipe(images):  # the output shape of a transformers image-to-text pipeline
        return [[{"generated_text": f" a  {im.size[0]} px picture "}] for im in images]

    caps, rep = caption_items(pipe, [tmp_path / "ok.png", tmp_path / "bad.png", tmp_path / "gone.png", None], None,
                              cache_dir=tmp_path / "c", ids=["w", "x", "y", "z"])
    assert caps == ["a 40 px picture", None, None, None]
    assert rep["failed"] == 2 and rep["without_picture"] == 1
    assert {e["item"]: e["reason"] for e in rep["failed_examples"]}["y"] == "file not found"
    assert "not a readable image" in {e["item"]: e["reason"] for e in rep["failed_examples"]}["x"]
    assert join_captions(["t", None, "u"], ["c", "d", None]) == ["t; caption: c", "caption: d", "u"]


def test_caption_model_flag_end_to_end(tiny_captioner, tmp_path, fake_text, capsys):
    solid((220, 30, 30)).save(tmp_path / "a.png")
    (tmp_path / "items.csv").write_text("item,title,cover\na,red thing,a.png\nb,no cover,\n")
    code, stdout, err = run(["content", "encode", "--catalog", str(tmp_path / "items.csv"), "--image-model",
                             "timm:tiny", "--image-col", "cover", "--caption-model", str(tiny_captioner), "--out",
                             str(tmp_path / "e"), "--json"], capsys)
    assert code == 0, err
    rep = json.loads(stdout)["report"]["captions"]
    assert rep["items_with_caption"] == 1 and rep["examples"][0]["item"] == "a"
    assert f"title: red thing; caption: {rep['examples'][0]['caption']}" in fake_text.seen
