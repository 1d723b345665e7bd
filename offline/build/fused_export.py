"""The fused scoring graphs: the first-stage rules' classifiers and arithmetic in one ONNX run.

Serving every request through separate sessions pays a session overhead and a copy
of the input for each (and M's layers twice: for its prediction and for its features);
one graph with a shared input pays once. The graph scores every class for each rule,
`[N, K]` ("how suspicious if M predicted k"): the BaDExpert rule from B and M' (once
with each M' in a build with two), the exposed rule from E's logit margins, the
Mahalanobis rule from M's penultimate features and the clean class Gaussians, which the
graph holds as constants, the auxiliary-posterior rule from each M''s own features
and Gaussians (M' runs once for both of its rules), the expert posterior from B's
features and Gaussians the same way, the layer-Mahalanobis rule from
M's pooled activations at its tapped layers, read on the same run of M's layers, the
spectrum rule from the input itself, and the trigger-direction rule as one linear map of
M's penultimate features. M runs
up to those features in both graphs; the one with the prediction adds M's classifier
layer and the argmax. The same graph serves whether the prediction comes from M inside
the graph or, with `--prediction-from-upstream`, from the production server's own
answer, which can arrive after scoring has finished. Built with a shared trunk (`offline
build --shared-trunk`), the graph runs M's frozen early layers once and feeds all four heads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import fx, nn

from firewall.artifacts import BY_CLASS_OUTPUTS, FUSED_FILES, PREDICTION_OUTPUT
from firewall.errors import UserError
from firewall.rules import RULES, auxiliary_roles, badexpert_rules, graph_rules, posterior_rules
from firewall.rules.auxiliary_posterior import posterior_by_class
from firewall.rules.badexpert import triangle_statistic
from firewall.rules.expert_posterior import ExpertPosteriorRule
from firewall.rules.exposed import margin_by_class
from firewall.rules.layer_mahalanobis import LayerGaussians, layer_mahalanobis_by_class
from firewall.rules.mahalanobis import mahalanobis_by_class
from firewall.rules.spectrum_mahalanobis import FLOOR, spectrum_mahalanobis_by_class, spectrum_operators
from firewall.rules.trigger_direction import trigger_direction_by_class
from offline.build.class_gaussians import ClassGaussians, FeatureSpace, LayerSpace
from offline.build.onnx_export import INPUT_NAME, export_onnx, relative_difference
from offline.build.stacked_networks import SeparateNetworks, StackedNetworks, Unstackable
from offline.build.trigger_direction import TriggerDirection
from offline.build.trunk_split import split_before_classifier

# The rules divide by probabilities that can be 1e-6: float32 rounding moves such a score
# by parts in 1e4 (measured 1.6e-4 on shapes/blend); BaDExpert's are compared on a bounded
# scale (`_score_difference`). A wrong graph is off by order one.
MAX_RELATIVE_DIFF = 1e-3


def badexpert_by_class(b: torch.Tensor, a: torch.Tensor, gamma: float = 0.5) -> torch.Tensor:
    """-t for every class at once (see firewall.rules.badexpert.triangle_statistic)."""
    t = torch.minimum(a / (gamma * b.clamp_min(1e-8)), (1.0 - b) / (gamma - a).clamp_min(1e-8))
    return -t


def exposed_by_class(logits: torch.Tensor) -> torch.Tensor:
    """Each class's logit minus the largest other (see firewall.rules.exposed.margin_by_class)."""
    top2 = logits.topk(2, dim=1).values
    others = torch.where(logits >= top2[:, :1], top2[:, 1:2], top2[:, :1])
    return logits - others


class MahalanobisByClass(nn.Module):
    """Features [N, d] -> squared Mahalanobis distance to every class mean, [N, K].

    Expanded as f'Pf - 2 mu_k'Pf + mu_k'P mu_k, so that K classes cost one [d, K]
    product instead of K copies of the features. The expansion subtracts large terms in
    float32, so features and means are first centred on the class means' average: ReLU
    features share a large positive offset (an untrained ResNet-18's penultimate
    features put the auxiliary posterior 1.5% off the float64 rule without it).
    """

    def __init__(self, means: np.ndarray, precision: np.ndarray):
        super().__init__()
        centre = means.mean(axis=0)
        means, precision = torch.from_numpy(means - centre), torch.from_numpy(precision)
        self.register_buffer("centre", torch.from_numpy(centre))
        self.register_buffer("precision", precision)
        self.register_buffer("projected_means", precision @ means.T)  # [d, K]
        self.register_buffer("mean_norms", (means @ precision * means).sum(dim=1))  # [K]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = features.flatten(1) - self.centre
        quadratic = ((f @ self.precision) * f).sum(dim=1, keepdim=True)
        return quadratic - 2.0 * (f @ self.projected_means) + self.mean_norms


def posterior_by_class_torch(distances: torch.Tensor) -> torch.Tensor:
    """-log of each class's posterior from squared distances (see
    firewall.rules.auxiliary_posterior.posterior_by_class)."""
    return -(-0.5 * distances).log_softmax(dim=1)


class HeadWithPosterior(nn.Module):
    """A network's features (M''s or B's) -> (its logits, its posterior rule's scores for
    every class): the features feed both its classifier layer and its class Gaussians, so
    the network runs once for BaDExpert's rule and its posterior rule."""

    def __init__(self, space: FeatureSpace):
        super().__init__()
        self.classifier = space.split.head
        self.distances = MahalanobisByClass(space.gaussians.means, space.gaussians.precision)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(features), posterior_by_class_torch(self.distances(features))


class LayerMahalanobisByClass(nn.Module):
    """M's tapped layers' pooled activations -> the sum over the layers of each one's squared
    Mahalanobis distance to every class mean divided by the layer's scale, [N, K] (see
    firewall.rules.layer_mahalanobis)."""

    def __init__(self, layers: list[LayerGaussians]):
        super().__init__()
        self.layers = nn.ModuleList(MahalanobisByClass(means, precision) for means, precision, _ in layers)
        self.register_buffer("inverse_scales", torch.tensor([1.0 / scale for _, _, scale in layers]))

    def forward(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        distances = [layer(p) * self.inverse_scales[i] for i, (layer, p) in enumerate(zip(self.layers, pooled))]
        return torch.stack(distances).sum(dim=0)


class SpectrumMahalanobisByClass(nn.Module):
    """Images [N, C, H, W] -> the squared Mahalanobis distance of their block spectra to every
    class mean, [N, K] (see firewall.rules.spectrum_mahalanobis): the DCT and the bands as
    constant matrix products on each side."""

    def __init__(self, input_shape: tuple[int, ...], means: np.ndarray, precision: np.ndarray):
        super().__init__()
        operators = spectrum_operators(*input_shape[1:])
        for name, matrix in zip(("dct_h", "dct_w", "bands_h", "bands_w"), operators):
            self.register_buffer(name, torch.from_numpy(matrix.astype(np.float32)))
        self.distances = MahalanobisByClass(means, precision)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coefficients = self.dct_h @ x @ self.dct_w.T
        energy = self.bands_h @ (coefficients * coefficients) @ self.bands_w.T
        return self.distances((energy + FLOOR).log().flatten(1))


class TriggerDirectionByClass(nn.Module):
    """M's penultimate features [N, d] -> the trigger-direction rule's score for every class, [N, K]
    (see firewall.rules.trigger_direction)."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.register_buffer("weights", torch.from_numpy(weights.astype(np.float32)))
        self.register_buffer("bias", torch.from_numpy(bias.astype(np.float32)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.flatten(1) @ self.weights + self.bias


class FirstStageScorer(nn.Module):
    """x -> the BaDExpert (once per auxiliary), exposed, Mahalanobis, auxiliary-posterior
    (once per auxiliary), expert-posterior, layer-Mahalanobis, spectrum and trigger-direction
    scores for every class.

    `networks` runs B and each M' up to their features and E, one after another or stacked
    into one network (offline/build/stacked_networks.py). With a shared trunk
    the networks and M's feature layers are heads on the trunk's output and the trunk
    runs once (the layer-Mahalanobis rule then taps the layers of M's head only); without
    one the trunk is the identity and they are whole models.
    """

    def __init__(self, networks: SeparateNetworks | StackedNetworks, expert: FeatureSpace,
                 auxiliaries: list[FeatureSpace], gaussians: ClassGaussians, layers: LayerSpace,
                 spectrum: SpectrumMahalanobisByClass, direction: TriggerDirection, trunk: nn.Module | None = None):
        super().__init__()
        self.trunk = trunk if trunk is not None else nn.Identity()
        self.networks, self.features = networks, layers.tapped
        self.expert = HeadWithPosterior(expert)
        self.auxiliaries = nn.ModuleList(HeadWithPosterior(space) for space in auxiliaries)
        self.mahalanobis = MahalanobisByClass(gaussians.means, gaussians.precision)
        self.layer_mahalanobis = LayerMahalanobisByClass(layers.arrays())
        self.spectrum_mahalanobis = spectrum
        self.trigger_direction = TriggerDirectionByClass(direction.weights, direction.bias)

    def scores(self, x: torch.Tensor, h: torch.Tensor, features: torch.Tensor,
               pooled: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        expert_features, auxiliary_features, exposed_logits = self.networks(h)
        expert_logits, expert_posterior = self.expert(expert_features)
        b = expert_logits.softmax(dim=1)
        logits, posteriors = zip(*(auxiliary(f) for auxiliary, f in zip(self.auxiliaries, auxiliary_features)))
        badexpert = [badexpert_by_class(b, a.softmax(dim=1)) for a in logits]
        return (*badexpert, exposed_by_class(exposed_logits), self.mahalanobis(features), *posteriors,
                expert_posterior, self.layer_mahalanobis(pooled), self.spectrum_mahalanobis(x),
                self.trigger_direction(features))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.trunk(x)
        return self.scores(x, h, *self.features(h))


class PredictingScorer(nn.Module):
    """x -> (M's prediction, the first-stage scores for every class); M's feature layers
    run once for both."""

    def __init__(self, classifier: nn.Module, scorer: FirstStageScorer):
        super().__init__()
        self.classifier, self.scorer = classifier, scorer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.scorer.trunk(x)
        features, pooled = self.scorer.features(h)
        return self.classifier(features).argmax(dim=1), *self.scorer.scores(x, h, features, pooled)


def export_fused(models: dict[str, nn.Module], classifier: nn.Module, gaussians: ClassGaussians,
                 expert: FeatureSpace, auxiliaries: dict[str, FeatureSpace], layers: LayerSpace,
                 spectrum: ClassGaussians, direction: TriggerDirection,
                 example: torch.Tensor, out: Path, check_x: np.ndarray, trunk: nn.Module | None = None,
                 stack: bool = False) -> tuple[dict[str, float], dict]:
    """Write both fused graphs and check them against the numpy rules on real inputs;
    returns each graph's largest difference from the rules, and how the graphs run the
    firewall's networks (stacked or one after another, `_networks`).

    `models` are the whole networks by role; with a shared `trunk` they are
    `Composed(trunk, head)`, and the graphs run the trunk once and then the heads.
    `models["features"]` is M up to its penultimate layer and `classifier` the rest of M,
    which the graph with the prediction runs on those features. `expert` is B and `auxiliaries`
    the auxiliaries by role (their heads, with a shared trunk) cut before their
    classifier layer, with their clean class Gaussians; `models["<role>_features"]` the
    same cuts as whole models. `layers` taps `models["features"]` (its head, with a shared trunk);
    `models["layer_features"]` gives the same pooled activations from the input. `spectrum`
    are the class Gaussians of the clean inputs' block spectra, `direction` the trigger-direction
    rule's map of M's penultimate features. With `stack`, B, the
    auxiliaries and E run as one stacked network where their architecture allows.
    """
    rules = graph_rules(models)
    spaces = [auxiliaries[role] for role in auxiliary_roles(rules)]
    networks, layout = _networks(models, expert, spaces, trunk, stack)
    spectrum_distances = SpectrumMahalanobisByClass(tuple(example.shape[1:]), spectrum.means, spectrum.precision)
    scorer = FirstStageScorer(networks, expert, spaces, gaussians, layers, spectrum_distances, direction, trunk)
    scores = [BY_CLASS_OUTPUTS[rule] for rule in rules]
    graphs = {"fused": (PredictingScorer(classifier, scorer), [PREDICTION_OUTPUT, *scores]),
              "fused_without_original": (scorer, scores)}
    for role, (module, outputs) in graphs.items():
        export_onnx(module, example, out / FUSED_FILES[role], output_names=outputs)
    checks = {role: _check(models, gaussians, expert, auxiliaries, layers, spectrum, direction,
                           out / FUSED_FILES[role], check_x)
              for role in graphs}
    return checks, layout


def _networks(models: dict[str, nn.Module], expert: FeatureSpace, auxiliaries: list[FeatureSpace],
              trunk: nn.Module | None, stack: bool) -> tuple[SeparateNetworks | StackedNetworks, dict]:
    """B, the auxiliaries and E, stacked into one network if asked and they can be, else one
    after another; and what was done, for the manifest."""
    splits = [space.split for space in auxiliaries]
    if trunk is not None:
        return (SeparateNetworks(expert.split, splits, models["exposed"].head),
                {"stacked": False, "why": "a shared trunk's heads" if stack else "not asked for"})
    separate = SeparateNetworks(expert.split, splits, models["exposed"])
    if not stack:
        return separate, {"stacked": False, "why": "not asked for"}
    try:
        if not all(isinstance(models[role], fx.GraphModule) for role in ("expert", "exposed")):
            raise Unstackable("the networks are not torch.export graphs")
        exposed = split_before_classifier(models["exposed"])
        return StackedNetworks(expert.split, splits, exposed), {"stacked": True, "networks": 2 + len(splits)}
    except Unstackable as why:
        print(f"warning: --stack-networks: the networks run one after another: {why}", file=sys.stderr)
        return separate, {"stacked": False, "why": str(why)}


@torch.no_grad()
def _check(models: dict[str, nn.Module], gaussians: ClassGaussians, expert: FeatureSpace,
           auxiliaries: dict[str, FeatureSpace], layers: LayerSpace, spectrum: ClassGaussians,
           direction: TriggerDirection, path: Path, x: np.ndarray) -> float:
    """Largest relative difference of the scores between onnxruntime and the numpy rules on torch
    outputs; predictions must match exactly."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {INPUT_NAME: x})))
    tx = torch.from_numpy(x)
    b = models["expert"](tx).softmax(dim=1).numpy()
    features = models["features"](tx).flatten(1).numpy().astype(np.float64)
    expected = {"exposed": margin_by_class(models["exposed"](tx).numpy()),
                "mahalanobis": mahalanobis_by_class(features, gaussians.means, gaussians.precision),
                "layer_mahalanobis": layer_mahalanobis_by_class(models["layer_features"](tx).numpy(), layers.arrays()),
                "spectrum_mahalanobis": spectrum_mahalanobis_by_class(x, spectrum.means, spectrum.precision),
                "trigger_direction": trigger_direction_by_class(features, direction.weights, direction.bias)}
    for rule in badexpert_rules(graph_rules(models)):
        expected[rule] = -triangle_statistic(b, models[RULES[rule].auxiliary](tx).softmax(dim=1).numpy())
    posteriors = {rule: (RULES[rule].auxiliary, auxiliaries[RULES[rule].auxiliary])
                  for rule in posterior_rules(graph_rules(models))}
    for rule, (role, space) in {**posteriors, ExpertPosteriorRule.name: ("expert", expert)}.items():
        own_features = models[f"{role}_features"](tx).flatten(1).numpy().astype(np.float64)
        fitted = space.gaussians
        expected[rule] = posterior_by_class(mahalanobis_by_class(own_features, fitted.means, fitted.precision))
    if PREDICTION_OUTPUT in outputs and not np.array_equal(outputs[PREDICTION_OUTPUT],
                                                           models["original"](tx).argmax(dim=1).numpy()):
        raise UserError(f"{path.name}: the fused graph's predictions differ from the model's")
    diffs = {rule: _score_difference(rule, outputs[BY_CLASS_OUTPUTS[rule]], want) for rule, want in expected.items()}
    worst = max(diffs, key=diffs.__getitem__)
    if not diffs[worst] <= MAX_RELATIVE_DIFF:
        raise UserError(f"{path.name}: the fused graph's {worst} scores differ from the rule's by {diffs[worst]:.3g} "
                        f"(> {MAX_RELATIVE_DIFF})")
    return diffs[worst]


def _score_difference(rule: str, got: np.ndarray, want: np.ndarray) -> float:
    """How far the graph's scores are from the rule's. BaDExpert's t is a ratio of float32
    probabilities, and rounding moves it most where a denominator or numerator nearly
    vanishes: by parts in 1e3 where M''s probability a lies within 1e-4 of gamma and t is
    huge (shapes/VGG dynamic failed its build at 2e-3, session 21), by parts in 10 where the
    expert's b lies a few ulps under 1 and t is 1e-6 (shapes/VGG SIG at width 16: 8 ulps
    against 9, session 22). On the bounded scale t / (1 + t) both are below 1e-5, absolutely;
    a wrong graph is off by order one either way."""
    if rule in badexpert_rules((rule,)):
        return float(np.abs(_bounded(got) - _bounded(want)).max())
    return relative_difference(got, want)


def _bounded(score: np.ndarray) -> np.ndarray:
    """BaDExpert's score -t as t / (1 + t), in [0, 1)."""
    t = -score.astype(np.float64)
    return t / (1.0 + t)
