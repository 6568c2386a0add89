"""CLIP similarity: the raw mean cosine of frames and captions (x100 only when asked).

A tiny random transformers `CLIPModel` saved locally stands in for a published one.
"""

import numpy as np
import pytest
import torch
import transformers

from videoldm.convert import tiny_sd
from videoldm.evaluation import clip_score


@pytest.fixture(scope='module')
def clip_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('clip'))
  tiny_sd.write_tokenizer(path)
  vocab = len(tiny_sd.tokenizer_vocab())
  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=4,
                       max_position_embeddings=tiny_sd.MAX_LENGTH, bos_token_id=vocab - 2,
                       eos_token_id=vocab - 1, pad_token_id=vocab - 1),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, image_size=32, patch_size=8),
      projection_dim=16)
  torch.manual_seed(0)
  transformers.CLIPModel(config).eval().save_pretrained(path)
  tokenizer = transformers.CLIPTokenizer(f'{path}/vocab.json', f'{path}/merges.txt',
                                         model_max_length=tiny_sd.MAX_LENGTH)
  images = transformers.CLIPImageProcessor(size={'shortest_edge': 32},
                                           crop_size={'height': 32, 'width': 32})
  transformers.CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
  return path


def test_clip_similarity_is_the_mean_raw_cosine(clip_dir):
  rng = np.random.default_rng(0)
  videos = rng.uniform(-1, 1, (2, 3, 32, 32, 3)).astype(np.float32)
  captions = ['a 3 moving', 'and left']
  raw = clip_score.clip_similarity(videos, captions, clip_dir)
  model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
  processor = transformers.CLIPProcessor.from_pretrained(clip_dir)
  frames = [np.clip(np.round((frame + 1) * 127.5), 0, 255).astype(np.uint8)
            for frame in videos.reshape(6, 32, 32, 3)]
  with torch.no_grad():
    # transformers 5: the projected embeddings are the outputs' pooler_output.
    text = model.get_text_features(
        **processor(text=captions, return_tensors='pt', padding=True)).pooler_output
    image = model.get_image_features(**processor(images=frames, return_tensors='pt')).pooler_output
  cosine = torch.nn.functional.cosine_similarity(image, text.repeat_interleave(3, 0), dim=-1)
  assert raw == pytest.approx(float(cosine.mean()), abs=1e-6)
  assert -1 <= raw <= 1
  assert clip_score.clip_similarity(videos, captions, clip_dir, percent=True) == pytest.approx(
      100 * raw, rel=1e-6)
