"""Weight conversion to and from diffusers / transformers layouts, and temporal transfer."""

from videoldm.convert.temporal_transfer import transfer_temporal

__all__ = ['transfer_temporal']
