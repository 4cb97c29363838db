"""ONNX through onnxruntime-genai's model builder.

- :mod:`~koquant.exporters.onnx.exporter`: the ``onnx`` format (build, int4 GPTQ, gate);
- :mod:`~koquant.exporters.onnx.builder`: the pinned onnxruntime-genai model builder;
- :mod:`~koquant.exporters.onnx.genai`: onnxruntime-genai install checks, loading and the gate's child job;
- :mod:`~koquant.exporters.onnx.int4_gptq`: GPTQ for the int4 MatMulNBits weights;
- :mod:`~koquant.exporters.onnx.matmulnbits`: reading and rewriting MatMulNBits nodes;
- :mod:`~koquant.exporters.onnx.parity`: tokenizer and chat-template parity with the source.
"""
