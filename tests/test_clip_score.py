"""CLIP similarity: the raw mean cosine of frames and captions (x100 only when asked).

A tiny random transformers `CLIPModel` saved locally stands in for a published one.
"""

import numpy as np
import pytest
import torch
import transformers

import sd_video_helpers
from videoldm.evaluation import clip_score


@pytest.fixture(scope='module')
def clip_dir():
  return sd_video_helpers.tiny_clip_dir()


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
