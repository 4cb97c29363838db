"""GPTQ through GPTQModel.

- :mod:`~koquant.exporters.gptq.exporter`: the ``gptq`` format (checks, worker jobs, gate);
- :mod:`~koquant.exporters.gptq.worker`: GPTQModel in a child process.
"""
