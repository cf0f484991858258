"""Drop-in integrations of the engine with the training loops people already have.

Each framework has its own submodule, imported only when you import it (``import mtlkit``
imports none of them, nor any framework):

* :mod:`mtlkit.integrations.transformers`:
  :class:`~mtlkit.integrations.transformers.MultitaskTrainer`, a Hugging Face ``Trainer``
  whose step backpropagates each task's loss through :class:`~mtlkit.TaskGradients` (and
  the mix-in it is made of, for your own ``Trainer`` subclass);
* :mod:`mtlkit.integrations.sentence_transformers`:
  :class:`~mtlkit.integrations.sentence_transformers.MultitaskSentenceTransformerTrainer`,
  which turns the multi-dataset batch samplers' stream into steps with a batch of every
  task, and :class:`~mtlkit.integrations.sentence_transformers.MtlkitLoss`, mtlkit's pairwise
  losses as sentence-transformers losses;
* :mod:`mtlkit.integrations.lightning`: :class:`~mtlkit.integrations.lightning.MultitaskModule`,
  a ``LightningModule`` mix-in for automatic and manual optimization.

Install the frameworks with ``pip install "mtlkit[integrations]"``. See
``docs/integrations.md``.
"""

from __future__ import annotations

__all__: list[str] = []
