"""TFDS builders (`moving_digits`, `video_folder`) and the grain input pipeline.

Importing this package registers both builders with TFDS.
"""

from videoldm.data import moving_digits
from videoldm.data import video_folder
from videoldm.data import video_io
from videoldm.data.pipeline import batch_sharding
from videoldm.data.pipeline import DataIterator
from videoldm.data.pipeline import default_data_config
from videoldm.data.pipeline import get_builder
from videoldm.data.pipeline import global_batch_to_device
from videoldm.data.pipeline import make_dataset

__all__ = [
    'DataIterator', 'batch_sharding', 'default_data_config', 'get_builder',
    'global_batch_to_device', 'make_dataset', 'moving_digits', 'video_folder',
    'video_io',
]
