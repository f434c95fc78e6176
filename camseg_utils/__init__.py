"""camseg: can the Grad-CAM heatmaps of a CNN classifier segment the tumour it detected?

One module per job: ``data``, ``models``, ``device``, ``train``, ``cams``; heatmap -> mask in
``masks``, ``refinement`` (guided filter), ``morphology`` (clean-up) and ``selection`` (the
validation sweep); ``metrics``; ``protocol`` (choose on validation, score on test); ``unet``,
``filtering``, ``plots``, ``widgets``, ``report``, ``pipeline``, ``evaluate``.
"""

__version__ = "0.1.0"
