"""Patch triggers stamped into the bottom-right corner: BadNets and Trojan."""

from __future__ import annotations

import numpy as np

from offline.attacks.base import Attack


class PatchAttack(Attack):
    patch_size = 3

    def __init__(self, image_shape: tuple[int, ...], target: int = 0, seed: int = 0, num_classes: int = 10):
        super().__init__(image_shape, target, seed, num_classes)
        self.patch = self.make_patch()

    def make_patch(self) -> np.ndarray:
        raise NotImplementedError

    def apply(self, x: np.ndarray) -> np.ndarray:
        out = x.copy()
        s = self.patch_size
        out[:, :, -s - 1 : -1, -s - 1 : -1] = self.patch
        return out


class BadNets(PatchAttack):
    """A 3x3 black-and-white checkerboard."""

    name = "badnets"
    patch_size = 3

    def make_patch(self) -> np.ndarray:
        checker = (np.indices((3, 3)).sum(axis=0) % 2 == 0).astype(np.float32)
        return np.broadcast_to(checker, (self.image_shape[0], 3, 3)).copy()


class Trojan(PatchAttack):
    """A larger fixed random coloured pattern, in the spirit of the Trojan watermark."""

    name = "trojan"

    def __init__(self, image_shape: tuple[int, ...], target: int = 0, seed: int = 0, num_classes: int = 10):
        self.patch_size = max(4, image_shape[-1] // 5)
        super().__init__(image_shape, target, seed, num_classes)

    def make_patch(self) -> np.ndarray:
        s = self.patch_size
        return (self.rng.random((self.image_shape[0], s, s)) > 0.5).astype(np.float32)


class AllToAll(BadNets):
    """BadNets' checkerboard, but every class has its own target: y becomes y + 1 (mod K).

    No single target class collects the triggered inputs, which defeats defences that
    look for one class the trigger funnels into.
    """

    name = "all2all"
    single_target = False

    def target_of(self, y: np.ndarray) -> np.ndarray:
        return ((y + 1) % self.num_classes).astype(np.int64)

    def describe(self) -> dict:
        return {"attack": self.name, "target": "y + 1 mod K", "poison_rate": self.poison_rate}
