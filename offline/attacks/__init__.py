"""Backdoor attacks for red-teaming: each poisons a training set and triggers test inputs."""

from offline.attacks.base import Attack
from offline.attacks.patch import AllToAll, BadNets, Trojan
from offline.attacks.blend import AdaptiveBlend, Blend
from offline.attacks.dynamic import Dynamic
from offline.attacks.lowfreq import LowFrequency
from offline.attacks.sig import Sig
from offline.attacks.wanet import WaNet
from offline.attacks.none import NoAttack

ATTACKS: dict[str, type[Attack]] = {
    a.name: a for a in (BadNets, Blend, Trojan, Sig, WaNet, LowFrequency, Dynamic, AllToAll, AdaptiveBlend, NoAttack)
}

__all__ = ["ATTACKS", "Attack"]
