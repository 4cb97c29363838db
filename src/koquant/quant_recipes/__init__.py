"""What to do, as data.

- :mod:`~koquant.quant_recipes.recipe`: :class:`Recipe`, the format, quants and options of an export;
- :mod:`~koquant.quant_recipes.calibration`: Korean text sets (built-in, user files, chat-rendered), chunking;
- :mod:`~koquant.quant_recipes.gguf`, :mod:`~koquant.quant_recipes.gptq`, :mod:`~koquant.quant_recipes.onnx`:
  one table per format, one row per quant type (what it is, its name everywhere, the gate's thresholds),
  read by export, validation, plan and the runtime; :mod:`~koquant.quant_recipes.thresholds`: the bounds.
"""
