"""The built-in example pair (SmolLM2-135M base + a memorized-facts fine-tune) and its evaluation.

Importing this package does not import torch; `build` and `task` import it inside their functions.
"""
