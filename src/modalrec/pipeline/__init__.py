"""The fitted feature pipeline: the one contract from raw events to `Batch`, saved with the run.

`FeaturePipeline` (vocabularies, item and user side tables with their raw value maps, context codes, the
history builder's settings, graph features) is fitted on the training period by a task, saved under
`RUN/pipeline/`, and loaded by evaluation, `modalrec predict`, export and the service; `Collator` is the
one batch builder of all of them.
"""

from .collate import Collator
from .graph import GraphFeatures
from .history import History
from .pipeline import FeaturePipeline, Fetch, OnlineEvent, PipelineSettings, Sequence, hash_tree, verify_tree
from .side import FeatureMaps, SideSizes, SideTable, fit_side, words
from .vocab import Vocab

__all__ = ["Collator", "FeatureMaps", "FeaturePipeline", "Fetch", "GraphFeatures", "History", "OnlineEvent",
           "PipelineSettings", "Sequence", "SideSizes", "SideTable", "Vocab", "fit_side", "hash_tree",
           "verify_tree", "words"]
