"""swapseg.data: BraTS case discovery, loading, preprocessing, augmentation, synthetic data.

Import from the submodules (``swapseg.data.brats``, ``swapseg.data.labels``, ...); this
package module stays light so that importing one piece does not import them all.
"""
