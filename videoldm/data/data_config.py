"""The `config.data` block and its defaults.

Its own module so that config scripts load without TensorFlow, TFDS or grain
(sampling, export and benchmarks on machines that lack them).
"""

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
  """The `config.data` block, with its defaults."""
  config = ml_collections.ConfigDict()
  # 'videos': the files of `source`, decoded on the fly (videoldm/data/video_index.py);
  # else a TFDS name: 'moving_digits', or any dataset with a 'video' feature
  # (prepared in array_record format).
  config.name = 'moving_digits'
  config.source = ''  # For 'videos': a folder or a .csv/.jsonl manifest (local or gs://).
  config.index_dir = ''  # For 'videos': probe results; '' = <data_dir>/video_index/<digest>.
  config.clip_stride = 0  # For 'videos': frames between clip starts; 0 = back to back.
  config.cache_dir = ''  # A `python -m videoldm.cache` folder: its split is read from there.
  config.builder_config = 'default'  # TFDS config name; '' = the builder's default.
  # Extra TFDS builder kwargs, e.g. {'num_frames': 24} for a moving_digits variant.
  config.builder_kwargs = ml_collections.ConfigDict()
  config.data_dir = ''  # '' = TFDS default (~/tensorflow_datasets).
  config.split = 'train'
  config.eval_split = 'test'
  config.num_frames = 8  # Frames per clip fed to the model.
  config.frame_stride = 1  # Take every n-th source frame (lowers the fps).
  config.image_size = 32  # Frame height: resize to cover + centre crop; 0 = keep (TFDS).
  config.image_width = 0  # Frame width; 0 = image_size (square).
  config.prepare = True  # Generate the dataset when it is missing.
  # grain worker processes; 0 = in the main process. Workers need absl flags
  # parsed (true under absl.app); batches are the same for any count.
  config.num_workers = 0
  return config
