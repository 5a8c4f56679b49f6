"""seqpipe: variable-length multivariate sequences to fixed-size embeddings, at scale.

Raw files -> Beam job (`beam_jobs`) -> TFRecords + metadata.json (`records`) ->
length-sorted, exactly masked tf.data batches (`data`) -> LSTM autoencoder with
a mask-propagating bottleneck (`layers`, `models`) trained by one loop for every
tf.distribute strategy (`train`) -> embeddings (`embed`) -> SVM evaluation and
report (`evaluate`, `report`). `seqpipe quickstart` runs the whole chain.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("seqpipe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
