"""genrec.models: recommenders. Each maps a batch of histories to scores over the catalog."""

from genrec.models.base import Recommender
from genrec.models.content_knn import ContentKNN, ContentKNNConfig
from genrec.models.dcn import DCN, DCNConfig
from genrec.models.din import DIN, DINConfig
from genrec.models.gbdt import GBDTConfig
from genrec.models.hstu import HSTU, HSTUConfig
from genrec.models.itemknn import ItemKNN, ItemKNNConfig
from genrec.models.popularity import Popularity, PopularityConfig
from genrec.models.ranker import GenerativeRanker, RankerConfig
from genrec.models.sasrec import SASRec, SASRecConfig
from genrec.models.sequential import SequentialConfig, SequentialModel

BASELINES = {"popularity": (Popularity, PopularityConfig), "itemknn": (ItemKNN, ItemKNNConfig)}
SEQUENTIAL = {"sasrec": (SASRec, SASRecConfig), "hstu": (HSTU, HSTUConfig)}
# Ranking models score candidates for a user from an impression history (genrec.models.ranking.RankBatch).
RANKING = {"ranker": (GenerativeRanker, RankerConfig), "dcn": (DCN, DCNConfig), "din": (DIN, DINConfig)}

# ContentKNN is not in BASELINES: BASELINES builds models from a config alone, and it also needs item embeddings.
__all__ = ["BASELINES", "DCN", "DIN", "HSTU", "RANKING", "DCNConfig", "DINConfig", "GBDTConfig", "GenerativeRanker",
           "RankerConfig", "SEQUENTIAL", "ContentKNN", "ContentKNNConfig", "HSTUConfig", "ItemKNN",
           "ItemKNNConfig", "Popularity", "PopularityConfig", "Recommender", "SASRec", "SASRecConfig",
           "SequentialConfig", "SequentialModel"]
