"""Inference in the library: :func:`~safe.inference.pipeline.pipeline` (``safe.pipeline``) answers questions
about images and clips with a trained run; :mod:`~safe.inference.loading` loads the frozen base models and
SAFE checkpoints every stage starts from. ``safe predict`` and ``safe serve`` are built on these."""
