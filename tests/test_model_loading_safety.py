"""A user's model file is never unpickled: crafted .pt2 archives are refused or defused."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from firewall.errors import UserError
from offline.model_io import load_pt2, save_pt2


class _Plant:
    """Unpickling this creates a file: proof that a payload ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).touch, ())


def _tiny_pt2(path: Path) -> Path:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    save_pt2(model, torch.zeros(2, 1, 2, 2), path)
    return path


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, edit(name, zin.read(name)))
    return dst


def test_a_plain_export_loads_and_runs(tmp_path):
    program = load_pt2(_tiny_pt2(tmp_path / "m.pt2"))
    assert program.module()(torch.zeros(5, 1, 2, 2)).shape == (5, 3)


def test_pickled_sample_inputs_are_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Plant(str(marker)))
    crafted = _rewrite(_tiny_pt2(tmp_path / "m.pt2"), tmp_path / "evil.pt2",
                       lambda name, data: payload if "/data/sample_inputs/" in name else data)
    load_pt2(crafted)
    assert not marker.exists()


def test_weights_flagged_as_pickles_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"x": 1}, buffer)

    def edit(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            for meta in config["config"].values():
                meta["use_pickle"] = True
            return json.dumps(config).encode()
        return data

    crafted = _rewrite(_tiny_pt2(tmp_path / "m.pt2"), tmp_path / "evil.pt2", edit)
    with pytest.raises(UserError, match="pickled"):
        load_pt2(crafted)
    assert not marker.exists()


def test_unexpected_archive_entries_are_refused(tmp_path):
    src = _tiny_pt2(tmp_path / "m.pt2")
    crafted = tmp_path / "extra.pt2"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(crafted, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
        prefix = zin.namelist()[0].split("/")[0]
        zout.writestr(f"{prefix}/data/aotinductor/model.so", b"\x7fELF")
    with pytest.raises(UserError, match="unexpected entry"):
        load_pt2(crafted)


def test_torchvision_architecture_with_safetensors_weights(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    from offline.model_io import input_shape_of, load_model

    reference = torchvision.models.get_model("resnet18", weights=None, num_classes=7).eval()
    save_file(reference.state_dict(), str(tmp_path / "w.safetensors"))
    program = load_model("torchvision:resnet18", tmp_path / "w.safetensors", (3, 32, 32))
    assert input_shape_of(program) == (3, 32, 32)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(program.module()(x), reference(x), atol=1e-5)


def test_torchvision_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    from offline.model_io import load_model

    save_file({"fc.weight": torch.zeros(5, 3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(UserError, match="does not accept"):
        load_model("torchvision:resnet18", tmp_path / "w.safetensors", (3, 32, 32))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="safetensors"):
        load_model("torchvision:resnet18", tmp_path / "junk.safetensors", (3, 32, 32))
