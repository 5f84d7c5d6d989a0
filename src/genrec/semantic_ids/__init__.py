"""genrec.semantic_ids: residual quantisers (RQ-KMeans, RQ-VAE) that give every item a short code."""

from genrec.semantic_ids.codes import SemanticIds

__all__ = ["SemanticIds"]
