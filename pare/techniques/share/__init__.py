"""Weight sharing: k-means codebooks per layer (Deep Compression) and the hashing trick (HashedNets)."""

from pare.techniques.share.apply import share
from pare.techniques.share.config import ShareConfig

__all__ = ["share", "ShareConfig"]
