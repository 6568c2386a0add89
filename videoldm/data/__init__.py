"""Video data: TFDS builders (`moving_digits`, `video_folder`), video files and the grain pipeline.

Import the submodule you need: `pipeline` (importing it registers both builders
with TFDS), `data_config` (the `config.data` defaults, no TensorFlow needed),
`video_io`, `moving_digits`, `video_folder`.
"""
