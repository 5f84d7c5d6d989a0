"""genrec.content: text and image encoders that turn each item into an embedding (cached on disk)."""

from genrec.content.store import ItemEmbeddings

__all__ = ["ItemEmbeddings"]
