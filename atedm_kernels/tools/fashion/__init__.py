"""A small class-conditional diffusion model of SD-XL's layout, trained on Fashion-MNIST, and the yardstick that
measures its samples: where AT-EDM's attention maps are learnt, so what a selection keeps can be judged.

* :mod:`.data`: the Fashion-MNIST files (Debian's ``dataset-fashion-mnist``), their checksums, 32x32 tensors.
* :mod:`.model`: the U-Net (SD-XL's block layout at 32x32 pixels, class tokens into cross-attention) and loading.
* :mod:`.train`: the training run that made the committed weights (``python -m atedm_kernels.tools.fashion.train``).
* :mod:`.yardstick`: the classifier whose features give FID and whose predictions give class accuracy.
"""
