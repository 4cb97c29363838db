"""One :class:`~koquant.runtime.session.Backend` per format: ``hf``, ``gguf``, ``onnx``, ``gptq``.

The format registry (:mod:`koquant.exporters`) names each format's backend class; the loader imports
its module the first time a path of that format is loaded.
"""
