"""Loading and saving models without ever unpickling a user's file.

A `.pt2` archive stores plain tensors as raw bytes, but torch will `torch.load` (with
`weights_only=False`) any payload flagged `use_pickle`, the custom objects among the
constants and the sample inputs. A crafted archive could run code through any of
those. `load_pt2` therefore rebuilds the archive in memory from an allow-list of
entries, refuses every pickled payload, and blanks the sample inputs before torch
sees it.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from firewall.errors import UserError

_ALLOWED = re.compile(
    r"^[^/]+/(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|"
    r"models/[\w.-]+\.json|data/weights/[\w.-]+|data/constants/[\w.-]+|data/sample_inputs/[\w.-]+\.pt|"
    r"extra/[\w.-]+)$"
)
_CONFIG = re.compile(r"^[^/]+/data/(weights|constants)/model_(weights|constants)_config\.json$")


def _refuse(path: Path, why: str) -> UserError:
    return UserError(f"{path}: {why}; refusing to load it (export the model with torch.export.save "
                     "from plain tensors, or give torchvision:<arch> with --weights file.safetensors)")


def sanitized_pt2(path: Path) -> io.BytesIO:
    """The archive's bytes with every pickle-bearing entry refused or blanked."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{path} is not a .pt2 archive ({exc}): save the model with torch.export.save") from exc
    out = io.BytesIO()
    with archive, zipfile.ZipFile(out, "w") as clean:
        names = archive.namelist()
        if not any(n.endswith("/archive_format") for n in names):
            raise _refuse(path, "it is not in the PT2 archive format")
        for name in names:
            if name.endswith("/"):
                continue
            if not _ALLOWED.match(name):
                raise _refuse(path, f"it contains an unexpected entry {name!r}")
            data = archive.read(name)
            if "/data/sample_inputs/" in name:
                data = b""  # example inputs are a pickle; the model does not need them
            elif re.search(r"/data/(weights|constants)/[\w.-]+\.pt$", name):
                raise _refuse(path, f"it stores pickled tensors in {name!r} (legacy format)")
            elif _CONFIG.match(name):
                for fqn, meta in json.loads(data).get("config", {}).items():
                    if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
                        raise _refuse(path, f"entry {fqn!r} is a pickled object")
            clean.writestr(name, data)
    out.seek(0)
    return out


def load_pt2(path: str | Path) -> torch.export.ExportedProgram:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model {path} not found: give a .pt2 written by torch.export.save")
    buffer = sanitized_pt2(path)
    try:
        return torch.export.load(buffer)
    except Exception as exc:  # torch raises many types for a corrupt archive
        raise UserError(f"{path} could not be loaded as an ExportedProgram ({type(exc).__name__}: {exc})") from exc


def input_shape_of(program: torch.export.ExportedProgram) -> tuple[int, ...]:
    """The user input's shape without the batch dimension."""
    user_inputs = program.graph_signature.user_inputs
    if len(user_inputs) != 1:
        raise UserError(f"the model takes {len(user_inputs)} inputs; the firewall serves single-input classifiers")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0])
    return tuple(int(d) for d in node.meta["val"].shape[1:])


def export_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with a dynamic batch dimension, in eval mode.

    An already exported graph (torch.fx.GraphModule) has its mode baked into its
    operators and refuses `.eval()`; it is re-exported as it is.
    """
    batch = torch.export.Dim("batch", min=1)
    if not isinstance(model, torch.fx.GraphModule):
        model = model.eval()
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def save_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.export.save(export_program(model, example), path)


def load_torchvision(arch: str, weights: Path, input_shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    """A torchvision architecture with safetensors weights, exported like a `.pt2` would be."""
    import torchvision
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(weights).is_file():
        raise UserError(f"weights {weights} not found: give --weights file.safetensors")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{weights} is not a readable safetensors file ({exc})") from exc
    head = [k for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    if not head:
        raise UserError(f"{weights} has no linear classifier weight to read the number of classes from")
    try:
        model = torchvision.models.get_model(arch, weights=None, num_classes=state[head[-1]].shape[0])
        model.load_state_dict(state)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"torchvision:{arch} does not accept {weights} ({exc})") from exc
    return export_program(model, torch.zeros((2, *input_shape)))


def load_model(spec: str, weights: Path | None = None, input_shape: tuple[int, ...] | None = None) -> torch.export.ExportedProgram:
    """`path.pt2` or `torchvision:<arch>` with safetensors weights."""
    if spec.startswith("torchvision:"):
        if weights is None:
            raise UserError("torchvision:<arch> needs --weights file.safetensors")
        return load_torchvision(spec.split(":", 1)[1], weights, input_shape or (3, 224, 224))
    return load_pt2(spec)
