"""The conventional way to feed a segmentation model, as torchvision's
references/segmentation recipe does (presets.SegmentationPresetTrain with the
pair transforms of its transforms.py): a torch DataLoader whose workers decode
every image file with PIL and transform each sample on its own, every epoch.

    RandomResize(0.5 * base, 2 * base)   shorter side to a random size; masks nearest
    RandomHorizontalFlip(0.5)
    RandomCrop(crop)                     padding smaller images (image 0, mask 255)
    PILToTensor, ConvertImageDtype(float), Normalize(ImageNet mean and std)

batched by a DataLoader with a shuffling sampler and drop_last, as its train.py
does. Written here with torchvision's functional API (the recipe's transforms
module is not part of the installed package)."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from segpipe.data.batches import Batch
from segpipe.data.raw import Pair, RawDataset
from segpipe.device import Runtime

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ReferenceTrainTransform:
    """One (PIL image, PIL mask) pair -> (3, crop, crop) float, (crop, crop) int64."""

    def __init__(self, base_size: int, crop_size: int, hflip_prob: float = 0.5, ignore_index: int = 255):
        self.min_size, self.max_size = int(0.5 * base_size), int(2.0 * base_size)
        self.crop_size, self.hflip_prob, self.ignore_index = crop_size, hflip_prob, ignore_index

    def _pad_if_smaller(self, image: Image.Image, fill: int) -> Image.Image:
        width, height = image.size
        if min(width, height) >= self.crop_size:
            return image
        return F.pad(image, [0, 0, max(self.crop_size - width, 0), max(self.crop_size - height, 0)], fill=fill)

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        size = random.randint(self.min_size, self.max_size)
        image = F.resize(image, size)
        mask = F.resize(mask, size, interpolation=InterpolationMode.NEAREST)
        if random.random() < self.hflip_prob:
            image, mask = F.hflip(image), F.hflip(mask)
        image, mask = self._pad_if_smaller(image, 0), self._pad_if_smaller(mask, self.ignore_index)
        width, height = image.size
        top, left = random.randint(0, height - self.crop_size), random.randint(0, width - self.crop_size)
        image = F.crop(image, top, left, self.crop_size, self.crop_size)
        mask = F.crop(mask, top, left, self.crop_size, self.crop_size)
        tensor = F.convert_image_dtype(F.pil_to_tensor(image), torch.float)
        return F.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD), torch.as_tensor(np.array(mask), dtype=torch.int64)


class PhotoFiles(Dataset):
    """Decodes each pair from its files on every access, as torchvision's VOC and COCO datasets do."""

    def __init__(self, raw: RawDataset, pairs: list[Pair], transform: ReferenceTrainTransform):
        self.root, self.pairs, self.transform = raw.root, pairs, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        pair = self.pairs[index]
        image = Image.open(self.root / pair.image).convert("RGB")
        mask = Image.open(self.root / pair.mask)
        return self.transform(image, mask)


def reference_loader(dataset: Dataset, batch_size: int, workers: int, runtime: Runtime) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=RandomSampler(dataset), num_workers=workers,
                      drop_last=True, pin_memory=runtime.device.type == "cuda")


class LoaderBatches:
    """A DataLoader in the shape train_one_epoch takes from data.batches.Batches, so the
    conventional loader is timed through the very same training step: only the
    feeding differs. One process (shard 0 of 1); full batches (drop_last)."""

    shard = (0, 1)

    def __init__(self, loader: DataLoader, runtime: Runtime):
        self.loader, self.runtime = loader, runtime

    def __len__(self) -> int:
        return len(self.loader)

    def training_steps(self) -> int:
        return len(self.loader)

    def iterate(self, generator: torch.Generator | None = None):
        device = self.runtime.device
        for images, masks in self.loader:
            index = np.arange(len(images))
            yield Batch(images.to(device, non_blocking=True), masks.to(device, non_blocking=True), index)
