"""GGUF through llama.cpp.

- :mod:`~koquant.exporters.gguf.exporter`: the ``gguf`` format (convert, quantize, gate);
- :mod:`~koquant.exporters.gguf.llamacpp`: the pinned llama.cpp (sources, converter, quantizer, the
  portable CPU build, held-out logits);
- :mod:`~koquant.exporters.gguf.imatrix`: the importance matrix from Korean calibration text;
- :mod:`~koquant.exporters.gguf.reader`: the pure-Python GGUF header reader (plan, runtime and bench read with it).
"""
