"""The `config.data` block and its defaults.

Its own module so that config scripts load without TensorFlow, TFDS or grain
(sampling, export and benchmarks on machines that lack them).
"""

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
  """The `config.data` block, with its defaults."""
  config = ml_collections.ConfigDict()
  # TFDS name: 'moving_digits', 'video_folder', or any dataset with a 'video'
  # feature (it must be prepared in array_record format).
  config.name = 'moving_digits'
  config.builder_config = 'default'  # Config name; '' = the builder's default.
  # Extra builder kwargs, e.g. {'video_dir': '/my/videos', 'image_size': 64}
  # for video_folder or {'num_frames': 24} to derive a moving_digits variant.
  config.builder_kwargs = ml_collections.ConfigDict()
  config.data_dir = ''  # '' = TFDS default (~/tensorflow_datasets).
  config.split = 'train'
  config.eval_split = 'test'
  config.num_frames = 8  # Frames per clip fed to the model.
  config.frame_stride = 1  # Take every n-th source frame (lowers the fps).
  config.image_size = 32  # Resize + centre crop when it differs; 0 = keep.
  config.prepare = True  # Generate the dataset when it is missing.
  # grain worker processes; 0 = in the main process. Workers need absl flags
  # parsed (true under absl.app); batches are the same for any count.
  config.num_workers = 0
  return config
