"""Chat templates of the seed families and of the newer families, as jinja2 text.

The five seed templates are written by koquant from the prompt formats published on each
model card (see shared/seed-models.md); the exact bytes matter - Synatra's closing tag really
is ``[\\INST]`` with a trailing space, komt has no space after ``[INST]``. :func:`chat_template`
gives the real templates of newer families, read at run time from the copies llama.cpp keeps
in its sources (``models/templates/`` of the pinned llama-cpp-python sdist), and EXAONE 4's,
written by koquant.
"""

from __future__ import annotations

#: name -> file in llama.cpp's models/templates/. Gemma 3 ships no template there; its turn
#: markup (``<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n``) is Gemma 2's, so
#: "gemma3" is the Gemma 2 file. Unlike Gemma 3's own template, which puts a system message
#: in front of the first user turn, it refuses a system message.
TEMPLATE_FILES = {
    "qwen2.5": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "qwen3": "Qwen-Qwen3-0.6B.jinja",
    "gemma2": "google-gemma-2-2b-it.jinja",
}

# ocelot-10.8b (EEVE-Korean-Instruct-10.8B tokenizer). Format = EEVE-Instruct card prompt.
OCELOT = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = \"A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.\" -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- bos_token + system_message + '\\n' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'Human: ' + message['content'] + '\\n' -}}"
    "{%- else -%}"
    "{{- 'Assistant:\\n' + message['content'] + eos_token + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- 'Assistant:\\n' -}}"
    "{%- endif -%}"
)

# synatra-7b: <s>[INST] {prompt} [\INST]  (backslash + trailing space). System folded into first user turn.
SYNATRA = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.first and system_message -%}"
    "{%- set content = system_message + '\\n\\n' + message['content'] -%}"
    "{%- else -%}"
    "{%- set content = message['content'] -%}"
    "{%- endif -%}"
    "{{- '[INST] ' + content + ' [\\\\INST] ' -}}"
    "{%- else -%}"
    "{{- message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# komt-mistral-7b: [INST]{prompt} [/INST]  (no space after [INST]); BOS rendered by the template.
KOMT = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.first and system_message -%}"
    "{%- set content = system_message + '\\n\\n' + message['content'] -%}"
    "{%- else -%}"
    "{%- set content = message['content'] -%}"
    "{%- endif -%}"
    "{{- '[INST]' + content + ' [/INST]' -}}"
    "{%- else -%}"
    "{{- message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# llama3-ko-8b-aog: ### Question / ### Instruction (system; default = card's instruction; first turn only; empty system omits it) / ### Response.
AOG = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = '당신은 인공지능 비서입니다. 사용자가 답을 이해하기 위해 외부에서 검색할 필요가 없도록 상세한 답변을 제공하세요.' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '### Question:\\n' + message['content'] + '\\n\\n' -}}"
    "{%- if loop.first and system_message -%}"
    "{{- '### Instruction:\\n' + system_message + '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- else -%}"
    "{{- '### Response:\\n' + message['content'] + eos_token + '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '### Response:\\n' -}}"
    "{%- endif -%}"
)

# gemma-ko-2b: Instruction: {prompt}\n output:   System folded into first user turn.
GEMMA = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.first and system_message -%}"
    "{%- set content = system_message + '\\n\\n' + message['content'] -%}"
    "{%- else -%}"
    "{%- set content = message['content'] -%}"
    "{%- endif -%}"
    "{{- 'Instruction: ' + content + '\\n' -}}"
    "{%- else -%}"
    "{{- ' output:' + message['content'] + eos_token + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- ' output:' -}}"
    "{%- endif -%}"
)

# exaone4: [|system|]{system}[|endofturn|]\n[|user|]{prompt}[|endofturn|]\n[|assistant|]{answer}[|endofturn|]\n
# (EXAONE 4.0 card). No default system turn, no BOS; tool results are [|tool|] turns; an assistant
# turn's <think>...</think> part is kept as written.
EXAONE4 = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('Unknown role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' and not loop.first -%}"
    "{{- raise_exception('A system message must come first') -}}"
    "{%- endif -%}"
    "{{- '[|' + message['role'] + '|]' + message['content'] + '[|endofturn|]\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '[|assistant|]' -}}"
    "{%- endif -%}"
)

#: the names :func:`chat_template` knows
# Gemma 3 (the pinned sdist ships no Gemma 3 template): Gemma 2's turns, but a system message is folded
# into the first user turn, followed by a blank line, as Gemma 3's published prompt format does.
GEMMA3 = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim -}}"
    "{{- '<end_of_turn>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<start_of_turn>model\n' -}}"
    "{%- endif -%}"
)

#: templates koquant writes itself (no real one ships offline), by family name
WRITTEN = {"exaone4": EXAONE4, "gemma3": GEMMA3}
TEMPLATE_NAMES = (*TEMPLATE_FILES, *WRITTEN)


def chat_template(name: str) -> str:
    """The chat template of family ``name`` (one of :data:`TEMPLATE_NAMES`), as jinja2 text."""
    from koquant.errors import KoquantError

    if name in WRITTEN:
        return WRITTEN[name]
    if name not in TEMPLATE_FILES:
        raise KoquantError(f"no chat template called {name!r}",
                           hint="known: " + ", ".join(TEMPLATE_NAMES))
    from koquant.exporters.gguf.llamacpp import llama_cpp_source

    path = llama_cpp_source() / "models" / "templates" / TEMPLATE_FILES[name]
    if not path.is_file():
        raise KoquantError(
            f"the pinned llama.cpp sources have no {path.name}",
            hint="set KOQUANT_LLAMA_CPP_SRC to the vendor/llama.cpp folder of an unpacked llama-cpp-python sdist",
        )
    return path.read_text(encoding="utf-8")
