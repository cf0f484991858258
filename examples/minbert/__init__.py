"""miniBERT: a small multitask BERT example (SST sentiment, Quora paraphrase, STS similarity).

Run from the repository root: ``python -m examples.minbert train`` (see ``README.md`` here).
The modules import only what they need, in this order (no cycles):

- :mod:`examples.minbert.model`: the BERT encoder in one file (imports nothing of the example).
- :mod:`examples.minbert.weights`: loading pretrained checkpoints (all-MiniLM-L6-v2 by default).
- :mod:`examples.minbert.tokenizer`: a WordPiece tokenizer wrapper producing padded tensors.
- :mod:`examples.minbert.data`: readers, datasets and collation for the CS224N-format files.
- :mod:`examples.minbert.metrics`: accuracy, correlations, confusion matrix, per-class F1.
- :mod:`examples.minbert.tasks`: one record per task (data, head, loss, prediction, metrics).
- :mod:`examples.minbert.multitask`: the shared encoder with the tasks' heads.
- :mod:`examples.minbert.evaluate`, :mod:`~examples.minbert.report`,
  :mod:`~examples.minbert.checkpoint`: predictions and scores, run reports, checkpoints.
- :mod:`examples.minbert.train`: the config, the set-up and the training loop.
- :mod:`examples.minbert.cli`: ``python -m examples.minbert train|evaluate``.
"""
