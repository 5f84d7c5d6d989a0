"""genrec.semantic_ids: residual quantisers (RQ-KMeans, RQ-VAE) that give every item a short code."""

from genrec.semantic_ids.codes import SemanticIds
from genrec.semantic_ids.kmeans import KMeansResult, kmeans
from genrec.semantic_ids.pipeline import items_digest, quality_report, tokenize
from genrec.semantic_ids.rqkmeans import ResidualKMeans
from genrec.semantic_ids.rqvae import RQVAE, RQVAEConfig
from genrec.semantic_ids.tokenizer import Tokenizer, TokenizerConfig, assign_unique

__all__ = ["RQVAE", "KMeansResult", "RQVAEConfig", "ResidualKMeans", "SemanticIds", "Tokenizer", "TokenizerConfig",
           "assign_unique", "items_digest", "kmeans", "quality_report", "tokenize"]
