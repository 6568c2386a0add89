"""CLIP similarity between frames and captions, with a CLIP model from a local folder.

Needs a Hugging Face `CLIPModel` folder on disk (config + weights, e.g. a
saved `openai/clip-vit-base-patch32`); the project has only the CLIP text
tower in Flax, so this uses the transformers (PyTorch, CPU) implementation.
Score: the mean raw cosine similarity of each frame's image embedding with its
clip's caption embedding (CLIPSIM as the paper reports it, e.g. 0.2929 on
MSR-VTT); `percent=True` gives it x100 (as some papers do), under its own name.
"""

import os

import einops
import numpy as np


def projected(features):
  """The projected embeddings: transformers 5 returns them as the output's `pooler_output`."""
  return getattr(features, 'pooler_output', features)


class ClipScorer:
  """Per-frame cosine similarities with a CLIPModel loaded once from `clip_dir`."""

  def __init__(self, clip_dir: str, batch_size: int = 32):
    if not os.path.isfile(os.path.join(clip_dir, 'config.json')):
      raise FileNotFoundError(f'CLIP folder {clip_dir!r} has no config.json; CLIP similarity '
                              'needs a locally saved transformers CLIPModel (none can be '
                              'downloaded).')
    import transformers  # pylint: disable=g-import-not-at-top
    self.model = transformers.CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    self.processor = transformers.CLIPProcessor.from_pretrained(clip_dir, local_files_only=True)
    self.batch_size = batch_size

  def cosines(self, videos, captions) -> np.ndarray:
    """Cosine `(b, f)` of each frame of videos `(b, f, h, w, 3)` in [-1, 1] with its caption."""
    import torch  # pylint: disable=g-import-not-at-top
    videos = np.asarray(videos, np.float32)
    if videos.ndim != 5 or len(captions) != len(videos):
      raise ValueError(f'Videos {videos.shape} and {len(captions)} captions do not pair up; '
                       'expected (b, f, h, w, 3) and b captions.')
    frames = einops.rearrange((videos + 1) * 127.5, 'b f h w c -> (b f) h w c')  # (b f) h w c
    frames = list(np.clip(np.round(frames), 0, 255).astype(np.uint8))
    normalize = lambda x: torch.nn.functional.normalize(projected(x), dim=-1)
    with torch.no_grad():
      text = self.processor(text=list(captions), return_tensors='pt', padding=True,
                            truncation=True)  # CLIP reads at most its context length.
      text_embeds = normalize(self.model.get_text_features(**text))
      image_embeds = []
      for start in range(0, len(frames), self.batch_size):
        pixels = self.processor(images=frames[start:start + self.batch_size], return_tensors='pt')
        image_embeds.append(normalize(self.model.get_image_features(**pixels)))
      image_embeds = torch.cat(image_embeds)
    per_frame = einops.rearrange(image_embeds.numpy(), '(b f) d -> b f d', b=len(videos))
    return np.einsum('bfd,bd->bf', per_frame, text_embeds.numpy())


def clip_similarity(videos, captions, clip_dir: str, batch_size: int = 32,
                    percent: bool = False) -> float:
  """CLIPSIM of videos `(b, f, h, w, 3)` in [-1, 1] with their `b` captions: the mean
  cosine (x100 with `percent`)."""
  cosine = ClipScorer(clip_dir, batch_size).cosines(videos, captions)
  return float((100.0 if percent else 1.0) * cosine.mean())
