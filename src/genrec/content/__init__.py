"""genrec.content: text, image and video encoders that turn each item into an embedding (cached on disk), captions
of covers and frames (:mod:`genrec.content.caption`), and text queries mapped into the same space
(:mod:`genrec.content.query`).

Heavy libraries (sentence-transformers, efficientnet-lite-pytorch, pillow, PyAV, transformers) are imported only
when a model is used; install them with ``pip install 'genrec[content]'``.
"""

from genrec.content.cache import EmbeddingCache, cache_root
from genrec.content.caption import ImageCaptioner, TransformersCaptioner, caption_items, captioner
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
from genrec.content.video import (
    TemporalAttentionPooling,
    VideoConfig,
    VideoEncoder,
    attach_video_frames,
    sample_frames,
    video_config,
    video_frames,
)

__all__ = [
    "DEFAULT_IMAGE_MODEL",
    "DEFAULT_TEXT_MODEL",
    "Catalog",
    "ContentTable",
    "EfficientNetLite0Encoder",
    "EmbeddingCache",
    "FusionConfig",
    "ImageCaptioner",
    "ImageEncoder",
    "ItemEmbeddings",
    "OpenClipEncoder",
    "QueryEncoder",
    "SentenceTransformerEncoder",
    "TemporalAttentionPooling",
    "TextEncoder",
    "TimmEncoder",
    "TransformersCaptioner",
    "VideoConfig",
    "VideoEncoder",
    "attach_video_frames",
    "blend_with_query",
    "build_texts",
    "caption_items",
    "captioner",
    "cache_root",
    "default_text_fields",
    "encode_catalog",
    "fuse",
    "fusion_config",
    "image_encoder",
    "load_catalog",
    "sample_frames",
    "text_encoder",
    "to_content_space",
    "video_config",
    "video_frames",
]
