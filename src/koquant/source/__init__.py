"""What comes in: the vetted Hugging Face checkpoint.

- :mod:`~koquant.source.checkpoint`: :class:`Checkpoint` (config, tokenizer, template, weights, hashes);
- :mod:`~koquant.source.safetensors`: the one bounded safetensors header reader;
- :mod:`~koquant.source.architectures`: the architecture registry (export, runtime, bench and plan read it);
- :mod:`~koquant.source.chat_template`: sandboxed chat-template rendering.
"""
