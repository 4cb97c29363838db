"""One :class:`~koquant.runtime.session.Backend` per format: ``hf``, ``gguf``, ``onnx``, ``gptq``.

Each module registers its backend with :func:`~koquant.runtime.loader.register_backend` when
:mod:`koquant.runtime.loader` imports it, the first time a path of that format is loaded.
"""
