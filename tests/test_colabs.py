"""colabs/*.ipynb: stored without outputs, and run top to bottom (at toy size) in a real kernel.

Each notebook's `parameters` cell is followed by an injected cell with test
settings (papermill's convention), then nbclient executes every cell; a failing
cell fails the test.
"""

import pathlib
import re

import nbclient
import nbformat
import pytest

from videoldm.pipelines import writer

REPO = pathlib.Path(__file__).resolve().parents[1]
COLABS = sorted((REPO / 'colabs').glob('*.ipynb'))
TINY_NETS = {
    'optimizer.warmup_steps': 0, 'data.num_frames': 4, 'data.image_size': 16,
    'model.autoencoder.sample_size': 16, 'model.autoencoder.block_out_channels': (8, 8, 8),
    'model.unet.block_out_channels': (16, 16), 'sampling.num_steps': 2,
}


def test_colabs_exist_are_valid_and_stored_without_outputs():
  assert [path.name for path in COLABS] == ['quickstart.ipynb', 'stable_diffusion_to_video.ipynb']
  for path in COLABS:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
      if cell.cell_type == 'code':
        assert cell.outputs == [] and cell.execution_count is None, path.name
    tagged = [cell for cell in notebook.cells if 'parameters' in cell.metadata.get('tags', [])]
    assert len(tagged) == 1, path.name


def execute(name: str, parameters: dict, workdir: pathlib.Path) -> list[str]:
  """Runs the notebook with `parameters` injected; returns each code cell's text outputs."""
  notebook = nbformat.read(REPO / 'colabs' / name, as_version=4)
  index = next(i for i, cell in enumerate(notebook.cells)
               if 'parameters' in cell.metadata.get('tags', []))
  injected = '\n'.join(f'{key} = {value!r}' for key, value in parameters.items())
  notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(
      injected, metadata={'tags': ['injected-parameters']}))
  nbclient.NotebookClient(notebook, timeout=900, kernel_name='python3',
                          resources={'metadata': {'path': str(workdir)}}).execute()
  texts = []
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      texts.append(''.join(output.get('text', '') for output in cell.outputs
                           if output.output_type == 'stream'))
      mimes = [mime for output in cell.outputs for mime in output.get('data', {})]
      texts[-1] += ''.join(f'<{mime}>' for mime in mimes)
  return texts


@pytest.mark.slow
def test_quickstart_colab_trains_samples_and_plots_alpha(tmp_path):
  workdir = tmp_path / 'run'
  texts = '\n'.join(execute('quickstart.ipynb', dict(
      WORKDIR=str(workdir), CONFIG_ARG='runlocal', STAGES=('autoencoder', 'image', 'video'),
      OVERRIDES={'total_steps': 2, 'batch_size': 2, **TINY_NETS}, NUM_FRAMES=6, LABELS=(3, 7)),
      tmp_path))
  for stage in ('autoencoder', 'image', 'video'):
    assert f'{stage}: 2 steps' in texts
  assert f'6 frames of 2 videos in {workdir}/notebook.mp4' in texts
  frames = writer.read_video(str(workdir / 'notebook.mp4'))
  assert frames.shape == (6, 16, 32, 3)  # Two 16x16 videos side by side.
  assert '<image/gif>' in texts and '<image/png>' in texts
  mixers = re.search(r'(\d+) temporal mixers after 2 steps; alpha from ([\d.]+) to ([\d.]+)',
                     texts)
  assert mixers is not None, texts
  assert int(mixers.group(1)) > 0 and 0 < float(mixers.group(2)) <= float(mixers.group(3)) < 1


@pytest.mark.slow
def test_sd_colab_converts_trains_temporal_only_and_samples_a_prompt(tmp_path):
  workdir = tmp_path / 'run'
  texts = '\n'.join(execute('stable_diffusion_to_video.ipynb', dict(
      WORKDIR=str(workdir), OVERRIDES={'total_steps': 2}, NUM_FRAMES=4,
      PROMPT='a 3 moving left'), tmp_path))
  assert f'SD params: {workdir}/tiny_sd/videoldm_params.safetensors' in texts
  assert 'trained 2 steps' in texts
  changed = re.search(r'([\d,]+) temporal params in \d+ arrays \(trained\); (\d+) of (\d+) '
                      'spatial arrays identical to SD', texts)
  assert changed is not None, texts
  assert int(changed.group(1).replace(',', '')) > 0
  assert int(changed.group(2)) == int(changed.group(3)) > 0
  assert f"4 frames for 'a 3 moving left' in {workdir}/prompt.mp4" in texts
  assert writer.read_video(str(workdir / 'prompt.mp4')).shape[0] == 4
  assert '<image/gif>' in texts
