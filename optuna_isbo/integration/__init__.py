"""Integrations of IS-SGD with training frameworks (optional dependencies).

- :mod:`optuna_isbo.integration.lightning`: :class:`ISSGDLightningCallback`, a PyTorch
  Lightning callback (``pip install "optuna-isbo[lightning]"``).

The submodules import their framework when imported themselves, never from here.
"""
