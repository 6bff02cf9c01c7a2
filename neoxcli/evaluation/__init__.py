"""Evaluation: lm-evaluation-harness tasks on neox models, and perplexity / bits per byte on text.

- ``adapter``: ``NeoxLM``, a neox model and tokenizer as an lm-eval LM (scores like its ``hf`` backend);
- ``tasks``: resolving task names, YAML files and include paths, offline checks, running lm-eval;
- ``results``: the results document, its atomic writes, per-request samples and table renderings;
- ``perplexity``: token perplexity, bits per byte/character and word perplexity over text files;
- ``models``: loading what is evaluated, a neox checkpoint or a Hugging Face directory.

Importing the package imports neither torch nor lm-eval; ``adapter`` needs both.
"""
