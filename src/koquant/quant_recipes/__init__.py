"""What to do, as data.

- :mod:`~koquant.quant_recipes.recipe`: :class:`Recipe`, the format, quants and options of an export;
- :mod:`~koquant.quant_recipes.calibration`: Korean text sets (built-in, user files, chat-rendered), chunking.
"""
