"""`.npz` tensor sets: `x` float32 [N, ...] in the model's input space, `y` int64 [N],
and for a triggered set `target` int64 [N]. Loaded without pickle, validated up front."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firewall.errors import UserError


@dataclass(frozen=True)
class TensorSet:
    x: np.ndarray
    y: np.ndarray
    target: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> "TensorSet":
        target = None if self.target is None else self.target[index]
        return TensorSet(self.x[index], self.y[index], target)

    def row_digests(self) -> list[str]:
        """A short digest of each input's float32 bytes, so that a later step can tell which
        of its inputs a build has already seen, whatever file or format they came in."""
        rows = np.ascontiguousarray(self.x, np.float32).reshape(len(self.x), -1)
        return [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in rows]

    def save(self, path: Path) -> None:
        arrays = {"x": self.x.astype(np.float32), "y": self.y.astype(np.int64)}
        if self.target is not None:
            arrays["target"] = self.target.astype(np.int64)
        np.savez_compressed(path, **arrays)


def load_tensor_set(
    path: str | Path,
    *,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    require_target: bool = False,
) -> TensorSet:
    """Load and check a tensor set against what the model expects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: give an .npz with arrays x and y")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path} is not a readable .npz ({exc}); object arrays are refused") from exc
    for key in ("x", "y") + (("target",) if require_target else ()):
        if key not in arrays:
            raise UserError(f"{path} has no array '{key}' (it has {sorted(arrays)}); "
                            "a tensor set needs x float32 [N, ...] and y int64 [N]")
    x, y = arrays["x"], arrays["y"]
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{path}: x has dtype {x.dtype}; save it as float32 in the model's input space")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise UserError(f"{path}: y must be a 1-d integer array, got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise UserError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    if len(y) == 0:
        raise UserError(f"{path} is empty")
    if not np.isfinite(x).all():
        raise UserError(f"{path}: x contains NaN or Inf")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise UserError(f"{path}: inputs have shape {tuple(x.shape[1:])} but the model takes "
                        f"{tuple(input_shape)} (without the batch dimension)")
    target = arrays.get("target")
    tensors = TensorSet(
        x.astype(np.float32, copy=False),
        y.astype(np.int64, copy=False),
        None if target is None else target.astype(np.int64, copy=False),
    )
    if num_classes is not None:
        check_labels(tensors, num_classes, path)
    return tensors


def check_labels(tensors: TensorSet, num_classes: int, path: str | Path) -> None:
    """Every label (and attack target) must name one of the model's classes."""
    for name, labels in (("y", tensors.y), ("target", tensors.target)):
        if labels is not None and (labels.min() < 0 or labels.max() >= num_classes):
            raise UserError(f"{path}: labels in '{name}' span {labels.min()}..{labels.max()} "
                            f"but the model has {num_classes} classes (0..{num_classes - 1})")
