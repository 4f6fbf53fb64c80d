"""Search over a common space: FAISS indexes per modality, metadata, query embedders.

Owns :class:`EmbeddingIndex` (build / save / load / search) and :class:`QueryEmbedder` (how a raw
text, image or audio query is embedded into the index's space). Imports faiss lazily; may import
``commonspace.encoders``, ``commonspace.fusion`` and ``commonspace.learning`` at query time.
"""

from commonspace.index.query import QueryEmbedder, read_pixels
from commonspace.index.store import EmbeddingIndex, SearchResults

__all__ = ["EmbeddingIndex", "QueryEmbedder", "SearchResults", "read_pixels"]
