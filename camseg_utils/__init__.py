"""camseg: can the Grad-CAM heatmaps of a CNN classifier segment the tumour it detected?

One module per stage of the study: ``data``, ``models``, ``train``, ``cams``, ``segment``,
``metrics``, ``unet``, ``filtering``, ``plots``, ``widgets``, ``pipeline``.
"""

__version__ = "0.1.0"
