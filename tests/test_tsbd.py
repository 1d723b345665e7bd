"""TSBD resets, in M, the weights that clean unlearning moved most, then fine-tunes."""

import copy
import json

import torch
from torch import nn

from offline.build.tsbd import neuron_weight_change, zero_reinit


def two_conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))


def test_channels_are_ranked_across_layers_by_how_far_unlearning_moved_them():
    model = two_conv_model()
    unlearned = copy.deepcopy(model)
    with torch.no_grad():
        unlearned[2].weight[1] += 1.0  # second layer, channel 1 moved most
        unlearned[0].weight[3] += 0.1
    ranked = neuron_weight_change(model, unlearned)
    assert (ranked[0][1], ranked[0][2]) == ("2.weight", 1) and (ranked[1][1], ranked[1][2]) == ("0.weight", 3)


def test_zero_reinit_clears_the_most_changed_70_percent_of_the_top_channels_only():
    model = two_conv_model()
    unlearned = copy.deepcopy(model)
    with torch.no_grad():
        unlearned[2].weight[1] += torch.linspace(0.01, 1.0, 36).reshape(4, 3, 3)
    repaired, channels = zero_reinit(model, unlearned, share=1 / 8)
    assert channels == 1
    zeroed = repaired[2].weight[1] == 0
    assert zeroed.sum() == round(0.7 * 36)
    assert zeroed.flatten()[-25:].all()  # the 25 largest changes
    assert torch.equal(repaired[0].weight, model[0].weight)
    assert torch.equal(repaired[2].weight[0], model[2].weight[0])


def test_a_build_records_the_share_tsbd_chose_on_clean_data_and_its_evidence(tiny_artifacts):
    """The default build (`--auxiliary both`) makes TSBD's auxiliary as `--auxiliary tsbd` does."""
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    selection = manifest["models"]["auxiliary_tsbd"]["selection"]
    chosen = [run for run in selection["search"] if run["share"] == selection["chosen_share"]]
    assert len(chosen) == 1 and chosen[0]["recovered"] and chosen[0]["channels_reset"] > 0
    assert chosen[0]["heldout_after_reset"] < chosen[0]["final"]  # the reset cost accuracy that fine-tuning won back
