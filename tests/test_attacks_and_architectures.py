"""The red-team kit's attacks do what their names say, and every architecture exports to ONNX."""

import numpy as np
import pytest
import torch

from firewall.errors import UserError
from offline.attacks import ATTACKS
from offline.build.onnx_export import MAX_RELATIVE_DIFF, check_export, export_onnx, relative_difference
from offline.models import ARCHITECTURES, create_model
from offline.poison import PoisonConfig, run_poison

RNG = np.random.default_rng(0)
IMAGES = RNG.random((200, 3, 32, 32)).astype(np.float32)
LABELS = RNG.integers(0, 10, 200)


def test_all2all_sends_every_class_to_the_next_one():
    attack = ATTACKS["all2all"]((3, 32, 32), num_classes=10)
    assert attack.target_of(np.array([0, 3, 9])).tolist() == [1, 4, 0]
    poisoned = attack.poison(IMAGES, LABELS, np.random.default_rng(1))
    rows = poisoned.poisoned
    assert rows.sum() == 20 and np.array_equal(poisoned.y[rows], (LABELS[rows] + 1) % 10)


def test_lowfreq_is_a_small_smooth_image_wide_perturbation():
    attack = ATTACKS["lowfreq"]((3, 32, 32))
    pattern = attack.pattern
    assert np.isclose(np.abs(pattern).max(), 0.1, atol=1e-6)
    assert (np.abs(pattern) > 0.01).mean() > 0.5  # everywhere, not a patch
    for axis in (-1, -2):  # smooth: neighbours differ far less than random noise of that size would
        assert np.abs(np.diff(pattern, axis=axis)).mean() < 0.5 * np.abs(pattern).mean()
    triggered = attack.apply(IMAGES)
    assert triggered.min() >= 0.0 and triggered.max() <= 1.0


def test_adaptive_blend_adds_regularisation_inputs_that_keep_their_labels():
    attack = ATTACKS["adaptive_blend"]((3, 32, 32))
    poisoned = attack.poison(IMAGES, LABELS, np.random.default_rng(1))
    changed = np.any(poisoned.x != IMAGES, axis=(1, 2, 3))
    payload, regular = poisoned.poisoned, changed & ~poisoned.poisoned
    assert payload.sum() == 10 and regular.sum() == 10
    assert (poisoned.y[payload] == 0).all() and np.array_equal(poisoned.y[regular], LABELS[regular])
    partial = np.isclose(poisoned.x[payload], IMAGES[payload]).mean(axis=(1, 2, 3))
    assert ((partial > 0.3) & (partial < 0.7)).all()  # about half of the pieces, never the whole trigger


def test_inference_alpha_makes_a_fainter_trigger_at_test_time_only():
    faint = ATTACKS["blend"]((3, 32, 32), inference_alpha=0.05)
    full = ATTACKS["blend"]((3, 32, 32))
    assert np.array_equal(faint.apply(IMAGES), full.apply(IMAGES))
    assert np.abs(faint.apply_at_test(IMAGES) - IMAGES).mean() < np.abs(full.apply_at_test(IMAGES) - IMAGES).mean()


def test_inference_alpha_is_refused_for_a_trigger_without_opacity(tmp_path):
    with pytest.raises(UserError, match="opacity"):
        run_poison(PoisonConfig(dataset="digits", attack="badnets", out=tmp_path / "x", inference_alpha=0.1))


@pytest.mark.parametrize("attack, target, message", [("badnets", 10, "0 to 9"), ("badnets", -1, "0 to 9"),
                                                      ("all2all", 3, "no single target"), ("none", 2, "no single target")])
def test_a_target_outside_the_classes_or_for_an_attack_without_one_is_refused(tmp_path, attack, target, message):
    with pytest.raises(UserError, match=message):
        run_poison(PoisonConfig(dataset="digits", attack=attack, out=tmp_path / "x", target=target))


def test_an_attack_sends_its_triggered_inputs_to_the_target_it_is_given():
    attack = ATTACKS["wanet"]((3, 32, 32), target=7, num_classes=10)
    assert attack.target_of(np.array([0, 3, 9])).tolist() == [7, 7, 7]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 32, 32)])
def test_every_architecture_exports_to_onnx_with_a_dynamic_batch(arch, shape, tmp_path):
    model = create_model(arch, shape, 10, width=8).eval()
    example = torch.rand(2, *shape)
    export_onnx(model, example, tmp_path / "m.onnx")
    assert check_export(model, tmp_path / "m.onnx", np.random.rand(5, *shape).astype(np.float32)) < 1e-4


def test_the_export_check_allows_float32_rounding_of_large_logits_but_not_a_wrong_value():
    # an exposed model's logits reach the thousands, where two float32 steps are 2.4e-4
    large = np.float32([[1764.5627]])
    assert relative_difference(np.nextafter(np.nextafter(large, np.inf), np.inf), large) <= MAX_RELATIVE_DIFF
    assert relative_difference(np.float32([[0.5012]]), np.float32([[0.5]])) > MAX_RELATIVE_DIFF
    assert relative_difference(large * 1.01, large) > MAX_RELATIVE_DIFF


def test_the_export_check_measures_a_small_logit_on_the_scale_of_its_inputs_largest():
    # shapes/ResNet blend seed 1's exposed model: onnxruntime's rounding of a row reaching 5,514
    want = np.float32([[5513.744, 2.2558832], [0.25, 0.5]])
    assert relative_difference(np.float32([[5513.744, 2.2565198], [0.25, 0.5]]), want) <= MAX_RELATIVE_DIFF
    assert relative_difference(np.float32([[5513.744, 2.2565198], [0.25, 0.5012]]), want) > MAX_RELATIVE_DIFF
    assert relative_difference(np.float32([[5513.744, 3.2558832], [0.25, 0.5]]), want) > MAX_RELATIVE_DIFF  # off by 1


def test_dynamic_triggers_differ_per_input_and_train_with_the_model():
    attack = ATTACKS["dynamic"]((3, 32, 32))
    x, y = torch.from_numpy(IMAGES[:50]), torch.from_numpy(LABELS[:50])
    inputs, labels, diversity = attack.poison_batch(x, y)
    changed = (inputs != x).flatten(1).any(dim=1)
    assert changed.sum() == 10  # 10% backdoor + 10% cross
    assert (labels[changed] == 0).sum() >= 5 and torch.isfinite(diversity) and diversity.requires_grad
    triggered = attack.apply(IMAGES[:4])
    patterns = triggered - IMAGES[:4]
    assert np.abs(patterns).max() <= attack.amplitude + 1e-6
    assert not np.allclose(patterns[0], patterns[1])  # input-aware: no single fixed pattern


def test_resnet18_at_width_64_has_the_size_of_the_cifar_resnet18_of_the_backdoor_literature():
    model = create_model("resnet18", (3, 32, 32), 10, width=64)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


def test_an_export_names_no_source_file_and_does_not_depend_on_what_was_traced_before(tmp_path):
    # the build exports modules that call torch.export graphs; each graph's code gets the
    # next number of a process-wide counter, which the exporter's stack traces carried
    # into the file (with the builder's source paths)
    class Calling(torch.nn.Module):
        def __init__(self, traced: torch.nn.Module):
            super().__init__()
            self.traced = traced

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.traced(x)

    model = create_model("resnet", (1, 16, 16), 10, width=8).eval()
    example = torch.rand(2, 1, 16, 16)
    paths = [tmp_path / "first.onnx", tmp_path / "second.onnx"]
    for path in paths:
        export_onnx(Calling(torch.fx.symbolic_trace(model)), example, path)
    first, second = (path.read_bytes() for path in paths)
    assert first == second
    assert __file__.encode() not in first and b"stack_trace" not in first
