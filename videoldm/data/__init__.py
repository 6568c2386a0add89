"""Video data: `moving_digits` (TFDS), video files decoded on the fly, the grain pipeline.

Import the submodule you need: `pipeline` (importing it registers `moving_digits`
with TFDS), `data_config` (the `config.data` defaults, no TensorFlow needed),
`video_index` (folders and manifests into clip indexes), `video_decode` (PyAV),
`video_source` (the grain source), `video_io` (imageio reading/writing, resizing),
`moving_digits`.
"""
