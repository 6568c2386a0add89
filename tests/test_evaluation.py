"""Fréchet distance vs SciPy, the Inception score's identities, and the consistency metrics
on real moving_digits clips."""

import dataclasses

import numpy as np
import pytest
from scipy import linalg

from videoldm.evaluation import consistency
from videoldm.evaluation import digits
from videoldm.evaluation import frechet
from videoldm.evaluation import metrics


def scipy_frechet(x, y):
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  root = linalg.sqrtm(s1 @ s2)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


def test_frechet_of_a_set_with_itself_is_zero():
  x = np.random.default_rng(0).normal(size=(200, 16))
  assert abs(frechet.frechet_distance(x, x)) < 1e-6


def test_frechet_matches_scipy_on_random_data():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(300, 12))
  y = rng.normal(size=(250, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
  np.testing.assert_allclose(frechet.frechet_distance(x, y), scipy_frechet(x, y), rtol=1e-6)


def test_frechet_is_finite_and_accurate_on_rank_deficient_covariances():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(10, 64))  # Rank 9 covariances in 64 dimensions.
  y = rng.normal(size=(12, 64)) + 1.0
  distance = frechet.frechet_distance(x, y)
  assert np.isfinite(distance) and distance > 0
  # Exact for singular covariances: eigen-route vs the closed form on commuting (diagonal) ones.
  s1, s2 = np.diag([4.0, 0.0, 1.0]), np.diag([1.0, 9.0, 0.0])
  expected = 5 + 10 - 2 * (2.0 + 0 + 0)
  assert abs(frechet.frechet_distance_from_stats(np.zeros(3), s1, np.zeros(3), s2)
             - expected) < 1e-9


def test_frechet_rejects_mismatched_features():
  with pytest.raises(ValueError, match='Statistics shapes differ'):
    frechet.frechet_distance(np.ones((4, 3)) + np.eye(4, 3), np.ones((4, 2)) + np.eye(4, 2))


def test_flicker_is_zero_for_a_constant_offset_and_positive_for_noise():
  video = np.random.default_rng(3).uniform(-1, 1, size=(2, 5, 8, 8, 3))
  assert consistency.flicker(video + 0.2, video) < 1e-12
  noisy = video + np.random.default_rng(4).normal(scale=0.1, size=video.shape)
  assert consistency.flicker(noisy, video) > 0.05


def test_inception_score_is_one_for_identical_and_the_class_count_for_confident_balanced():
  rng = np.random.default_rng(5)
  same = np.tile(rng.dirichlet(np.ones(7)), (40, 1))
  assert metrics.inception_score(same)[0] == pytest.approx(1.0, abs=1e-9)
  assert metrics.inception_score(np.full((30, 5), 0.2))[0] == pytest.approx(1.0, abs=1e-9)
  confident = np.eye(6)[np.arange(60) % 6]
  mean, std = metrics.inception_score(confident, splits=5)
  assert mean == pytest.approx(6.0, abs=1e-9) and std == pytest.approx(0.0, abs=1e-9)
  with pytest.raises(ValueError, match='rows that sum to 1'):
    metrics.inception_score(np.ones((4, 3)))


SPEC = digits.DataSpec('single', (('num_frames', 32),), num_frames=8, frame_stride=4)


@pytest.fixture(scope='module')
def nets():
  """FrameNet trained for a few seconds on single-digit clips (ClipNet left untrained)."""
  return digits.train_feature_networks(SPEC, seed=0, num_clips=400, frame_steps=500,
                                       clip_steps=0)


@pytest.fixture(scope='module')
def real_clips():
  return digits.make_clips(SPEC, 'test', 24, seed=1)


def test_identity_is_one_on_real_clips_and_lower_when_frames_are_shuffled(nets, real_clips):
  real = real_clips['video']
  probs = nets.frame_probs(real)
  assert consistency.identity_consistency(probs, 1) == 1.0
  shuffled = consistency.shuffle_frames_across_clips(real)
  assert consistency.identity_consistency(nets.frame_probs(shuffled), 1) < 0.8


def test_label_agreement_follows_the_captions(nets, real_clips):
  probs = nets.frame_probs(real_clips['video'])
  caption_labels = np.asarray([digits.caption_digits(c) for c in real_clips['captions']])
  np.testing.assert_array_equal(caption_labels, real_clips['digits'])
  agreement = consistency.label_agreement(probs, caption_labels, 1)
  wrong = consistency.label_agreement(probs, (caption_labels + 1) % 10, 1)
  assert agreement >= 0.75 and wrong < 0.2


def test_digit_metrics_rank_shuffled_clips_worse(nets, real_clips):
  real = real_clips['video']
  shuffled = consistency.shuffle_frames_across_clips(real)
  same = metrics.digit_video_metrics(nets, real, real)
  broken = metrics.digit_video_metrics(nets, shuffled, real)
  assert abs(same['fid_md']) < 1e-6 and abs(same['fvd_md']) < 1e-6
  assert broken['feature_change'] > same['feature_change']
  assert broken['identity'] < same['identity'] == 1.0


def test_clip_similarity_and_evaluate_name_their_bad_inputs(tmp_path):
  from videoldm import evaluate  # pylint: disable=g-import-not-at-top
  from videoldm.evaluation import clip_score  # pylint: disable=g-import-not-at-top
  with pytest.raises(FileNotFoundError, match='has no config.json'):
    clip_score.clip_similarity(np.zeros((1, 2, 8, 8, 3)), ['a 3'], str(tmp_path))
  with pytest.raises(ValueError, match='num_videos=1'):
    evaluate.evaluate(str(tmp_path), num_videos=1)
  with pytest.raises(ValueError, match='CLIP similarity needs the captions'):
    scores = evaluate.standard.StandardMetrics(evaluate.standard.Networks(), str(tmp_path),
                                               'x', 2, 16, 1, (8, 8))
    scores.scorer = object()  # As if a CLIP folder were given.
    scores.add(np.zeros((1, 2, 8, 8, 3)))


def test_evaluate_generates_in_label_batches_at_the_requested_guidance_and_eta(monkeypatch):
  from videoldm import evaluate  # pylint: disable=g-import-not-at-top
  seen = []

  class FakeVideoLDM:
    def __init__(self, models, settings):
      del models
      seen.append(settings)
      self.settings = settings

    def frames(self):  # One (b, h, w, 3) array per frame; the value is the label.
      labels = np.asarray(self.settings.labels, np.float32)
      for _ in range(self.settings.num_frames):
        yield np.broadcast_to(labels[:, None, None, None], (len(labels), 4, 4, 3))

  monkeypatch.setattr(evaluate.video_ldm, 'VideoLDM', FakeVideoLDM)
  videos = evaluate.generate({}, np.array([1, 2, 3]), num_frames=2, batch_size=2, seed=5,
                             guidance_scale=6.0, eta=1.0)
  assert videos.shape == (3, 2, 4, 4, 3)
  np.testing.assert_array_equal(videos[:, 0, 0, 0, 0], [1, 2, 3])
  assert [(s.labels, s.seed, s.guidance_scale, s.eta) for s in seen] == [((1, 2), 5, 6.0, 1.0),
                                                                    ((3,), 7, 6.0, 1.0)]


class RecordingWriter:
  def __init__(self):
    self.scalars = {}

  def write_scalars(self, step, scalars):
    self.scalars.update({(step, k): v for k, v in scalars.items()})

  def flush(self):
    pass


def test_metrics_hook_scores_each_sample_entry_against_the_data(nets, real_clips, tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from videoldm.data import data_config  # pylint: disable=g-import-not-at-top
  from videoldm.evaluation import hook  # pylint: disable=g-import-not-at-top
  data = data_config.default_data_config()
  data.builder_config, data.num_frames, data.frame_stride = 'single', 8, 4
  data.builder_kwargs = dict(num_frames=32)
  metrics_hook = hook.MetricsHook(ml_collections.ConfigDict(dict(data=data, seed=0)),
                                  str(tmp_path))
  assert metrics_hook.spec == SPEC
  metrics_hook._nets = nets  # The module's quickly trained nets, not a fresh training.
  real = real_clips['video']
  writer = RecordingWriter()
  results = metrics_hook(7, {'prediction': consistency.shuffle_frames_across_clips(real),
                             'first_frame': real[:, :1], 'data': real}, writer)
  assert sorted(results) == ['prediction']
  assert writer.scalars[(7, 'metrics/prediction/identity')] < 1.0
  assert writer.scalars[(7, 'metrics/prediction/real/identity')] == 1.0


def test_real_statistics_are_reused_only_under_their_protocol(tmp_path):
  from videoldm.evaluation import protocol as protocol_lib  # pylint: disable=g-import-not-at-top
  weights = tmp_path / 'i3d.npz'
  weights.write_bytes(b'weights')
  fvd = protocol_lib.Protocol('fvd', protocol_lib.network_id(str(weights)), 'ucf101 test',
                              2048, 16, 1, (128, 128))
  rng = np.random.default_rng(6)
  real, generated = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + 0.5
  path = str(tmp_path / 'real_fvd.npz')
  protocol_lib.save_stats(path, real, fvd)
  mu, sigma = protocol_lib.load_stats(path, fvd)
  stored = frechet.frechet_distance_from_stats(mu, sigma, *protocol_lib.statistics(generated))
  assert stored == pytest.approx(frechet.frechet_distance(real, generated), rel=1e-9)
  other = dataclasses.replace(fvd, num_frames=8, frame_stride=2)
  with pytest.raises(ValueError, match=r'frame_stride 1 -> 2, num_frames 16 -> 8;'):
    protocol_lib.load_stats(path, other)
  weights.write_bytes(b'other weights')  # Same file name, other network.
  renamed = dataclasses.replace(fvd, network=protocol_lib.network_id(str(weights)))
  with pytest.raises(ValueError, match=r"network 'i3d.npz@"):
    protocol_lib.load_stats(path, renamed)


class FakeClipNetwork:
  """Stands in for I3D / C3D: a fixed non-linear function of each (cropped) clip."""

  def __init__(self, path, *args, **kwargs):
    del path, args, kwargs

  def clip_features(self, videos):
    flat = np.asarray(videos).reshape(len(videos), -1)
    return flat[:, :5] + flat[:, 5:10] ** 2

  def clip_probs(self, videos):
    classes = (np.asarray(videos).reshape(len(videos), -1)[:, 0] > 0).astype(int)
    return np.eye(3)[classes] * 0.8 + 0.2 / 3


def test_standard_metrics_crop_accumulate_and_store_real_statistics_once(tmp_path, monkeypatch):
  from videoldm.evaluation import protocol as protocol_lib  # pylint: disable=g-import-not-at-top
  from videoldm.evaluation import standard  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(standard.i3d, 'I3DExtractor', FakeClipNetwork)
  monkeypatch.setattr(standard.c3d, 'C3DClassifier', FakeClipNetwork)
  for name in ('i3d.npz', 'c3d.npz'):
    (tmp_path / name).write_bytes(name.encode())
  networks = standard.Networks(i3d_weights=str(tmp_path / 'i3d.npz'),
                               c3d_weights=str(tmp_path / 'c3d.npz'))
  rng = np.random.default_rng(7)
  real, generated = rng.uniform(-1, 1, (2, 6, 16, 4, 6, 3))  # Wider than high: cropped.
  new = lambda stride=2: standard.StandardMetrics(networks, str(tmp_path), 'clips test', 6, 16,
                                                   stride, (4, 6), is_splits=2)
  scores = new()
  for part in (slice(0, 4), slice(4, 6)):  # Two batches.
    scores.add(generated[part], real[part])
  results, protocols = scores.results()
  crop = lambda v: FakeClipNetwork(None).clip_features(v[:, :, :, 1:5])  # The centred 4x4.
  assert results['fvd'] == pytest.approx(frechet.frechet_distance(crop(generated), crop(real)))
  probs = FakeClipNetwork(None).clip_probs(generated[:, :, :, 1:5])
  assert (results['is'], results['is_std']) == metrics.inception_score(probs, splits=2)
  assert protocols['fvd']['preprocessing'] == protocol_lib.PREPROCESSING
  assert protocols['fvd']['resolution'] == [4, 6] and protocols['is']['splits'] == 2
  again = new()  # The stored real statistics are used: no real clips needed.
  assert not again.needs_real
  again.add(generated)
  assert again.results()[0]['fvd'] == results['fvd']
  with pytest.raises(ValueError, match='frame_stride 2 -> 1'):
    new(stride=1)
  with pytest.raises(ValueError, match='Video IS uses 16-frame clips'):
    standard.StandardMetrics(networks, str(tmp_path / 'x'), 'clips test', 6, 8, 2, (4, 6))
