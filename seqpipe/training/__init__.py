"""Training: `seqpipe.training.trainer.train()` and the parts its docstring lists.

Imports nothing, so that `seqpipe.training.model_dir` stays free of TensorFlow.
"""
