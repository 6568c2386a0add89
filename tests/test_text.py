"""CLIP text encoder and tokenizer vs transformers (random weights, tiny vocab)."""

import collections
import json

import jax
import flax
import numpy as np
import pytest
import torch
import transformers

from videoldm.convert import common
from videoldm.convert import transformers as convert
from videoldm.models import text
from videoldm.models import tokenizer as tokenizer_lib

CAPTIONS = [
    'a 3 and a 7 moving left',
    '  Hello  World!! it\'s  A   CAT\'s\tphoto\n',
    'héllo wörld ñ 日本語 123',
    'x<|endoftext|>y',
    'hello! ! digits moving right',
    'a very long caption that will surely be truncated because it is far too long',
]
CORPUS = ('a 3 and a 7 moving left the digits are moving right and bouncing '
          'photo of a cat it\'s a digit moving up and down')


def learn_bpe(corpus: str, num_merges: int):
  """A minimal BPE learner -> (vocab dict, merges) in CLIP's file layout."""
  byte_map = tokenizer_lib.bytes_to_unicode()
  base = list(byte_map.values())
  tokens = base + [c + '</w>' for c in base]
  words = collections.Counter()
  for word in corpus.lower().split():
    mapped = ''.join(byte_map[b] for b in word.encode('utf-8'))
    words[tuple(mapped[:-1]) + (mapped[-1] + '</w>',)] += 1
  merges = []
  for _ in range(num_merges):
    pairs = collections.Counter()
    for word, count in words.items():
      for pair in zip(word, word[1:]):
        pairs[pair] += count
    if not pairs:
      break
    best = max(pairs.items(), key=lambda item: (item[1], item[0]))[0]
    merges.append(best)
    tokens.append(best[0] + best[1])
    merged_words = collections.Counter()
    for word, count in words.items():
      out, i = [], 0
      while i < len(word):
        if word[i:i + 2] == best:
          out.append(best[0] + best[1])
          i += 2
        else:
          out.append(word[i])
          i += 1
      merged_words[tuple(out)] += count
    words = merged_words
  tokens += ['<|startoftext|>', '<|endoftext|>']
  return {token: index for index, token in enumerate(tokens)}, merges


def write_tokenizer_folder(path, pad_token: str, max_length: int = 16):
  vocab, merges = learn_bpe(CORPUS, 60)
  path.mkdir(parents=True, exist_ok=True)
  (path / 'vocab.json').write_text(json.dumps(vocab), encoding='utf-8')
  (path / 'merges.txt').write_text(
      '#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in merges), encoding='utf-8')
  (path / 'tokenizer_config.json').write_text(
      json.dumps(dict(pad_token=pad_token, model_max_length=max_length)))
  return path


# SD 1.x pads with <|endoftext|>, SD 2.x with '!' (a special token splitting text).
@pytest.mark.parametrize('pad_token', ['<|endoftext|>', '!'])
def test_tokenizer_matches_transformers(tmp_path, pad_token):
  folder = write_tokenizer_folder(tmp_path / 'tokenizer', pad_token)
  reference = transformers.CLIPTokenizer.from_pretrained(str(folder))
  expected = reference(CAPTIONS, padding='max_length', max_length=16, truncation=True,
                       return_tensors='np').input_ids
  ours = tokenizer_lib.CLIPTokenizer.from_folder(str(folder))
  np.testing.assert_array_equal(ours(CAPTIONS), expected)
  assert ours.pad_token_id == reference.pad_token_id
  assert ours.max_length == 16


def test_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='vocab.json'):
    tokenizer_lib.CLIPTokenizer.from_folder(str(tmp_path))
  vocab, merges = learn_bpe(CORPUS, 5)
  with pytest.raises(ValueError, match='pad_token'):
    tokenizer_lib.CLIPTokenizer(vocab, merges, pad_token='<pad>')


def _tiny_transformers_config(hidden_act: str, eos_token_id: int):
  return transformers.CLIPTextConfig(
      vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
      num_attention_heads=4, max_position_embeddings=16, hidden_act=hidden_act,
      bos_token_id=0, eos_token_id=eos_token_id, pad_token_id=1, projection_dim=32)


def _torch_state(model):
  return {name: value.numpy() for name, value in model.state_dict().items()}


# (hidden_act, eos_token_id): SD-style configs pool at argmax(ids) (eos id 2);
# newer ones at the first eos id.
@pytest.fixture(scope='module', params=[('quick_gelu', 2), ('gelu', 7)],
                ids=['sd_style', 'eos_id'])
def pair(request):
  torch.manual_seed(0)
  reference = transformers.CLIPTextModel(_tiny_transformers_config(*request.param)).eval()
  with torch.no_grad():  # Norms start at 1/0; make them random too.
    for name, value in reference.named_parameters():
      if 'norm' in name:
        value.add_(0.2 * torch.randn_like(value))
  module, params = convert.clip_text_from_transformers(
      _torch_state(reference), reference.config.to_dict())
  return reference, module, params


def _ids():
  ids = np.random.RandomState(0).randint(3, 90, (2, 16))
  ids[0, 5], ids[0, 3], ids[1, 9] = 99, 7, 7  # max id / eos positions differ.
  return ids


def _rel_err(ours, reference):
  reference = reference.detach().numpy()
  return np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max()


def test_hidden_states_and_pooled_match_transformers(pair):
  reference, module, params = pair
  ids = _ids()
  with torch.no_grad():
    expected = reference(torch.tensor(ids), output_hidden_states=True)
    normed_penultimate = reference.final_layer_norm(expected.hidden_states[-2])
  apply = jax.jit(module.apply, static_argnames='output')
  last = apply({'params': params}, ids)
  penultimate = apply({'params': params}, ids, output='penultimate')
  assert _rel_err(last.last_hidden_state, expected.last_hidden_state) < 1e-4
  assert _rel_err(last.context, expected.last_hidden_state) < 1e-4
  assert _rel_err(last.penultimate_hidden_state, expected.hidden_states[-2]) < 1e-4
  assert _rel_err(last.pooled_output, expected.pooler_output) < 1e-4
  assert _rel_err(penultimate.context, normed_penultimate) < 1e-4


def test_attention_mask_matches_transformers(pair):
  reference, module, params = pair
  ids, mask = _ids(), np.ones((2, 16), np.int32)
  mask[1, 11:] = 0
  with torch.no_grad():
    expected = reference(torch.tensor(ids), attention_mask=torch.tensor(mask))
  ours = module.apply({'params': params}, ids, mask)
  assert _rel_err(ours.last_hidden_state, expected.last_hidden_state) < 1e-4


def test_round_trip_is_bit_exact(pair):
  reference, _, params = pair
  state = _torch_state(reference)  # transformers 5 names: no `text_model.` prefix.
  back = convert.clip_text_to_transformers(params, reference.config.to_dict(),
                                           text_model_prefix=False)
  assert sorted(back) == sorted(state)
  for name, value in state.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)
  hub = convert.clip_text_to_transformers(params)
  assert sorted(hub) == sorted('text_model.' + name for name in state)


def test_hub_layout_with_position_ids_buffer_loads(pair):
  reference, _, params = pair
  hub = {'text_model.' + k: v for k, v in _torch_state(reference).items()}
  hub['text_model.embeddings.position_ids'] = np.arange(16)[None]
  _, loaded = convert.clip_text_from_transformers(hub, reference.config.to_dict())
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


@pytest.mark.parametrize('change, message', [
    ('missing', 'missing from the state dict: text_model/encoder/layers_1/mlp/fc2/bias'),
    ('extra', 'unexpected in the state dict: encoder.layers.9.mlp.fc2.bias'),
    ('misshaped', r'mis-shaped: encoder.layers.0.self_attn.q_proj.weight \(32, 31\)'),
    ('buffer', 'unexpected in the state dict: embeddings.token_ids'),
])
def test_bad_state_dict_names_the_tensor(pair, change, message):
  reference = pair[0]
  state = _torch_state(reference)
  if change == 'missing':
    del state['encoder.layers.1.mlp.fc2.bias']
  elif change == 'extra':
    state['encoder.layers.9.mlp.fc2.bias'] = np.zeros(32, np.float32)
  elif change == 'misshaped':
    state['encoder.layers.0.self_attn.q_proj.weight'] = np.zeros((32, 31), np.float32)
  else:  # Only the known position_ids buffer is dropped, not any buffer.
    state['embeddings.token_ids'] = np.zeros((1, 16), np.int64)
  with pytest.raises(ValueError, match=message):
    convert.clip_text_from_transformers(state, reference.config.to_dict())


def test_config_round_trip_and_errors():
  config = text.clip_text_config('sd21')
  assert text.clip_text_config_from_transformers(
      text.clip_text_config_to_transformers(config)) == config
  with pytest.raises(ValueError, match="hidden_act 'relu2'"):
    text.clip_text_config('tiny', hidden_act='relu2')
  with pytest.raises(ValueError, match="output 'middle'"):
    model = text.CLIPTextModel(text.clip_text_config('tiny'))
    model.init(jax.random.key(0), np.zeros((1, 4), np.int32), output='middle')


@pytest.mark.parametrize('variant', ['sd15', 'sd21'])
def test_parameter_count_matches_transformers(variant):
  config = text.clip_text_config(variant)
  shapes = convert.clip_text_param_shapes(config)
  ours = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
  with torch.device('meta'):
    reference = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        **text.clip_text_config_to_transformers(config)))
  assert ours == sum(p.numel() for p in reference.parameters())
  names = {k for k in reference.state_dict() if not k.endswith('position_ids')}
  paths = flax.traverse_util.flatten_dict(shapes)
  assert names == {common.flax_path_to_torch_key(p).removeprefix('text_model.')
                   for p in paths}
