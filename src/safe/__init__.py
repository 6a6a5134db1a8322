"""SAFE: Selectively Augmenting Frozen Encoders.

Adds audio to a frozen vision-language model through gated adapters; with the gate closed the
model is bit-exact to the base.
"""
__version__ = "0.1.0"

__all__ = ["SAFEConfig", "SAFEModel", "SAFEProcessor", "pipeline", "__version__"]


def __getattr__(name):  # lazy: `import safe` stays cheap for the CLI's --help
    if name in ("SAFEConfig", "SAFEModel"):
        from safe.models.safe_model import SAFEConfig, SAFEModel

        return {"SAFEConfig": SAFEConfig, "SAFEModel": SAFEModel}[name]
    if name == "SAFEProcessor":
        from safe.processing.processor import SAFEProcessor

        return SAFEProcessor
    if name == "pipeline":
        from safe.inference.pipeline import pipeline

        return pipeline
    raise AttributeError(f"module 'safe' has no attribute {name!r}")
