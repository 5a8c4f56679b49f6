"""seqpipe: variable-length multivariate sequences to fixed-size embeddings, at scale.

Raw files -> the Beam job (`beam_jobs`) -> a dataset directory: TFRecord shards
+ metadata.json (`seqpipe.dataset`) -> length-sorted, exactly masked tf.data
batches (`seqpipe.input_pipeline`) -> an LSTM autoencoder with a
mask-propagating bottleneck (`seqpipe.model`) trained by one loop for every
tf.distribute strategy (`seqpipe.training`) -> embeddings, SVM evaluation and
a report (`seqpipe.commands`: the `seqpipe` command line). `seqpipe quickstart`
runs the whole chain.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("seqpipe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
