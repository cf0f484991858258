"""miniBERT: a small multitask BERT example (SST sentiment, Quora paraphrase, STS similarity).

The building blocks live in submodules that import only what they need:

- :mod:`examples.minbert.model`: the BERT encoder (:class:`~examples.minbert.model.BertModel`).
- :mod:`examples.minbert.weights`: loading pretrained checkpoints (all-MiniLM-L6-v2 by default).
- :mod:`examples.minbert.tokenizer`: a WordPiece tokenizer wrapper producing padded tensors.
- :mod:`examples.minbert.data`: readers, datasets and collation for the CS224N-format files.
- :mod:`examples.minbert.metrics`: accuracy, correlations, confusion matrix, per-class F1.
"""
