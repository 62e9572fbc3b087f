"""Tiny random-weight models built from configs (as diffusers' and transformers' own tests do).

They make every path run offline and fast; their output is noise. Each builder writes a folder that the
normal `from_pretrained` path loads. Called only by `loaders.ensure_tiny`; one module per architecture family.
"""
