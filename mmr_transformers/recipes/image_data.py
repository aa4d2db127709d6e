"""Image data sets for ``Trainer``: CIFAR-10/100 (torchvision), any ``ImageFolder`` tree, scikit-learn digits.

Items are ``{"pixel_values": Tensor[3, H, W], "labels": int}``. CIFAR-size images (``image_size`` 32) get the
standard augmentation (4-pixel padded random crop, horizontal flip) with optional AutoAugment and Cutout;
larger images get ImageNet's (random resized crop and flip; resize and center crop for evaluation).
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
DATASETS = ("cifar10", "cifar100", "imagefolder", "digits")


class Cutout:
    """Zero one random ``length``×``length`` square of a tensor image (DeVries & Taylor 2017)."""

    def __init__(self, length: int):
        self.length = length

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _, h, w = image.shape
        y, x = torch.randint(h, (1,)).item(), torch.randint(w, (1,)).item()
        image = image.clone()
        image[:, max(0, y - self.length // 2): y + self.length // 2, max(0, x - self.length // 2): x + self.length // 2] = 0
        return image


def image_transforms(train: bool, image_size: int = 32, normalization: str = "cifar10", cutout: int = 0,
                     autoaugment: bool = False):
    from torchvision import transforms as T

    mean, std = NORMALIZATION[normalization]
    if image_size <= 32:
        steps = [T.RandomCrop(image_size, padding=4), T.RandomHorizontalFlip()] if train else []
        if train and autoaugment:
            steps.append(T.AutoAugment(T.AutoAugmentPolicy.CIFAR10))
    else:
        steps = ([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()] if train
                 else [T.Resize(round(image_size * 8 / 7)), T.CenterCrop(image_size)])
        if train and autoaugment:
            steps.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if train and cutout:
        steps.append(Cutout(cutout))
    return T.Compose(steps)


class ImageDataset(Dataset):
    """``(image, label)`` pairs from ``source`` as ``{"pixel_values", "labels"}`` dicts, optionally a subset."""

    def __init__(self, source, transform, indices: list[int] | None = None):
        self.source, self.transform = source, transform
        self.indices = list(range(len(source))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        image, label = self.source[self.indices[i]]
        return {"pixel_values": self.transform(image), "labels": int(label)}


class _Digits(Dataset):
    """scikit-learn's 8×8 digits as 32×32 RGB PIL images (an offline check that needs no download)."""

    def __init__(self, train: bool, seed: int = 0):
        from PIL import Image
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = torch.randperm(len(digits.target), generator=torch.Generator().manual_seed(seed)).tolist()
        cut = int(0.8 * len(order))
        rows = order[:cut] if train else order[cut:]
        self.images = [Image.fromarray((digits.images[r] * 255 / 16).astype("uint8")).convert("RGB").resize((32, 32))
                       for r in rows]
        self.targets = [int(digits.target[r]) for r in rows]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


def _imagefolder(data_dir: str, train: bool):
    from torchvision.datasets import ImageFolder

    names = ("train",) if train else ("test", "val", "validation")
    for name in names:
        if os.path.isdir(os.path.join(data_dir, name)):
            return ImageFolder(os.path.join(data_dir, name))
    found = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else "no such directory"
    raise ValueError(f"{data_dir} needs a {' or '.join(repr(n) for n in names)} folder of class folders (ImageFolder); "
                     f"found {found}.")


def _source(dataset: str, data_dir: str | None, train: bool, download: bool):
    if download and dataset not in ("cifar10", "cifar100"):
        raise ValueError(f"download: only CIFAR-10/100 are downloaded (by torchvision); dataset {dataset!r} would "
                         "ignore it. Drop --download.")
    if dataset == "digits":
        if data_dir:
            raise ValueError("dataset 'digits' is scikit-learn's, built in, so --data_dir would be ignored. Drop it, "
                             "or use dataset 'imagefolder' for images in a folder.")
        return _Digits(train)
    if dataset == "imagefolder":
        if not data_dir:
            raise ValueError("dataset 'imagefolder' needs --data_dir with train/ and test/ (or val/) class folders.")
        return _imagefolder(data_dir, train)
    if dataset in ("cifar10", "cifar100"):
        from torchvision import datasets as tv

        cls = tv.CIFAR10 if dataset == "cifar10" else tv.CIFAR100
        root = data_dir or os.path.join("data", dataset)
        try:
            return cls(root=root, train=train, download=download)
        except RuntimeError as error:
            raise ValueError(f"{dataset} not found under {root}: pass --download on a machine with a network, or "
                             "use --dataset imagefolder with a folder of images.") from error
    raise ValueError(f"Unknown dataset {dataset!r}; choose one of {list(DATASETS)}.")


def subset_indices(size: int, limit: int | None, seed: int = 42) -> list[int] | None:
    """A seeded random subset of ``limit`` indices (the same for every run), or ``None`` for all."""
    if limit is None or limit >= size:
        return None
    return sorted(torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:limit].tolist())


def load_image_datasets(dataset: str, data_dir: str | None = None, download: bool = False, image_size: int = 32,
                        normalization: str | None = None, cutout: int = 0, autoaugment: bool = False,
                        max_train_samples: int | None = None, max_eval_samples: int | None = None):
    """``(train, eval, num_classes)`` as :class:`ImageDataset` objects."""
    normalization = normalization or (dataset if dataset in NORMALIZATION else ("imagenet" if image_size > 32 else "cifar10"))
    sources = {train: _source(dataset, data_dir, train, download) for train in (True, False)}
    classes = getattr(sources[True], "classes", None)
    if classes is not None and getattr(sources[False], "classes", classes) != classes:  # labels are folder indices
        raise ValueError(f"the evaluation classes {sources[False].classes} are not the training classes {classes}: "
                         "labels would mean other classes in the two splits. Give both splits the same class folders.")
    num_classes = len(classes) if classes is not None else len(set(sources[True].targets))
    if image_size <= 32:  # the CIFAR pipeline crops training images to image_size and takes the others as they are
        for train, source in sources.items():
            if len(source) and source[0][0].size != (image_size, image_size):
                width, height = source[0][0].size
                raise ValueError(
                    f"the {'training' if train else 'evaluation'} images are {width}×{height} (the first one), but "
                    f"image_size is {image_size}: the CIFAR pipeline (image_size <= 32) trains on random "
                    f"{image_size}×{image_size} crops and evaluates whole images, so both would differ. Pass "
                    f"image_size={max(width, height)} (above 32: random resized crops, and resize with a centre crop "
                    "for evaluation), or resize the images to it.")
    built = []
    for train, limit in ((True, max_train_samples), (False, max_eval_samples)):
        transform = image_transforms(train, image_size, normalization, cutout, autoaugment)
        built.append(ImageDataset(sources[train], transform, subset_indices(len(sources[train]), limit)))
    return built[0], built[1], num_classes
