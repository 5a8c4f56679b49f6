"""The model: an LSTM/GRU sequence autoencoder whose encoder turns a padded,
masked batch of variable-length sequences into one fixed-size embedding each.

The padding mask travels with the sequence from input to reconstruction, so
padded timesteps change neither the embedding nor the loss:

* `seqpipe.model.layers`: the masking layers (`SequenceMask`, `RepeatToLength`,
  `MaskedPooling`) that carry the mask through the bottleneck;
* `seqpipe.model.autoencoder`: `build_autoencoder` (the graph: encoder,
  embedding, decoder), `export_encoder` and `export_scorer` (SavedModels that
  serve without seqpipe: the embedding, and the reconstruction error per step
  and per sequence);
* `seqpipe.model.losses`: `masked_squared_error`, the reconstruction loss over
  the real timesteps only, and its exact normalization; `masked_step_errors`,
  the same errors per step and per sequence (anomaly scores).
* `seqpipe.model.objectives`: what training minimizes (`train.objective`):
  reconstruction, the T-Loss triplet loss on sub-sequences, or both.
"""
