"""genrec.content: text and image encoders that turn each item into an embedding (cached on disk), and text
queries mapped into the same space (:mod:`genrec.content.query`).

Heavy libraries (sentence-transformers, efficientnet-lite-pytorch, pillow) are imported only when a model is
used; install them with ``pip install 'genrec[content]'``.
"""

from genrec.content.cache import EmbeddingCache, cache_root
from genrec.content.encode import Catalog, FusionConfig, encode_catalog, fuse, fusion_config, load_catalog
from genrec.content.image import (
    DEFAULT_IMAGE_MODEL,
    EfficientNetLite0Encoder,
    ImageEncoder,
    OpenClipEncoder,
    TimmEncoder,
    image_encoder,
)
from genrec.content.query import ContentTable, QueryEncoder, blend_with_query, to_content_space
from genrec.content.store import ItemEmbeddings
from genrec.content.text import (
    DEFAULT_TEXT_MODEL,
    SentenceTransformerEncoder,
    TextEncoder,
    build_texts,
    default_text_fields,
    text_encoder,
)

__all__ = [
    "DEFAULT_IMAGE_MODEL",
    "DEFAULT_TEXT_MODEL",
    "Catalog",
    "ContentTable",
    "EfficientNetLite0Encoder",
    "EmbeddingCache",
    "FusionConfig",
    "ImageEncoder",
    "ItemEmbeddings",
    "OpenClipEncoder",
    "QueryEncoder",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "TimmEncoder",
    "blend_with_query",
    "build_texts",
    "cache_root",
    "default_text_fields",
    "encode_catalog",
    "fuse",
    "fusion_config",
    "image_encoder",
    "load_catalog",
    "text_encoder",
    "to_content_space",
]
