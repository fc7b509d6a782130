"""scissor: ask questions about videos with LLaVA-OneVision, compressing visual tokens with LLaVA-Scissor (SCC).

Importing this package is cheap: torch, transformers and decord are imported only by the modules that need them.
"""

__version__ = "0.1.0"
