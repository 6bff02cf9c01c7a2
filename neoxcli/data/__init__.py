"""Data: the mmap dataset format, tokenizers, ``neox prepare`` and GPT-NeoX's training samples.

Import from the submodules (``neoxcli.data.indexed``, ``.gpt_dataset``,
``.tokenizer``, ``.prepare``, ``.presets``); this package imports nothing heavy.
"""
