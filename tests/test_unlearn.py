"""TRuST on the real loop, with tiny settings so that each test takes seconds."""

import dataclasses
import threading

import pytest
import torch

from trust.concepts import PRESETS
from trust.neurons import candidate_weights
from trust.unlearn import UnlearnConfig, unlearn

FAST = {"num_train_images": 2, "retain_prompts": 2,
        "batch_size": 2, "probe_samples": 1, "probe_steps": 4, "hessian_samples": 1}


def test_only_masked_neurons_change_bit_for_bit(shapes_model):
    before = {n: p.detach().clone() for n, p in shapes_model.unet.named_parameters()}
    config = UnlearnConfig(max_steps=6, probe_every=0, lr=0.05, **FAST)
    reports = []
    result = unlearn(shapes_model, PRESETS["combination"], config, callback=reports.append)
    # the model's own UNet is untouched; the edited copy differs only in masked rows
    assert all(torch.equal(p, before[n]) for n, p in shapes_model.unet.named_parameters())
    edited = dict(result.unet.named_parameters())
    candidates = candidate_weights(result.unet)
    ever = {n: set() for n in candidates}
    for masks in result.mask_history.values():
        for n, rows in masks.items():
            ever[n].update(rows)
    for name, param in edited.items():
        if name not in candidates:
            assert torch.equal(param, before[name]), name
            continue
        changed = (param != before[name]).any(1).nonzero().flatten().tolist()
        assert set(changed) <= ever[name], name
    assert sum(len(rows) for rows in ever.values()) > 0
    assert result.changed_weights > 0
    assert 0 < result.changed_fraction < 0.02
    # a report per step, with everything the app draws
    assert [r.step for r in reports] == list(range(1, 7))
    r = reports[-1]
    assert set(r.losses) == {"unlearn", "cip", "csr", "pres", "total"}
    assert r.num_selected == sum(r.mask_sizes.values()) > 0
    assert len(r.top_neurons) == 8 and r.top_neurons[0][2] >= r.top_neurons[-1][2]
    assert set(r.saliency_z) == set(candidates) and r.saliency_z[next(iter(candidates))].shape == (32,)
    assert all(rep.refreshed for rep in reports)  # mask_every = 1
    assert r.elapsed > 0 and r.probe is None


def test_budget_caps_the_changed_weights(shapes_model):
    # tau 0.5 selects about a third of the 704 K/V neurons each step; the budget holds about 66 of them
    config = UnlearnConfig(max_steps=4, probe_every=0, lr=0.05, tau=0.5, max_changed=0.004, **FAST)
    result = unlearn(shapes_model, PRESETS["combination"], config)
    row = 64 / sum(p.numel() for p in result.unet.parameters())  # one K/V neuron's share of the UNet
    assert 0.004 - row < result.changed_fraction <= 0.004  # filled, never exceeded
    assert result.reports[-1].changed_fraction == pytest.approx(result.changed_fraction)


def test_static_mask_is_computed_once(shapes_model):
    result = unlearn(shapes_model, PRESETS["red"], UnlearnConfig(max_steps=4, mask_every=0, probe_every=0, **FAST))
    assert list(result.mask_history) == [0]
    assert [r.refreshed for r in result.reports] == [True, False, False, False]


def test_probe_stops_the_job_when_the_target_is_gone(shapes_model):
    config = UnlearnConfig(max_steps=40, probe_every=2, stop_ua=0.01, **FAST)  # any absent sample counts
    result = unlearn(shapes_model, PRESETS["combination"], config)
    probes = [r.probe for r in result.reports if r.probe is not None]
    assert probes and all(0 <= p.ua <= 1 and 0 <= p.ira <= 1 for p in probes)
    if result.stop_reason == "erased":
        assert probes[-1].ua >= 0.01 and result.steps % 2 == 0 and result.steps < 40


def test_a_run_held_by_stop_ira_says_why_it_went_on(shapes_model, monkeypatch):
    import trust.unlearn
    from trust.harness import Probe

    verdicts = iter([Probe(ua=0.5, ira=1.0, num_samples=8), Probe(ua=1.0, ira=0.5, num_samples=8),
                     Probe(ua=1.0, ira=0.75, num_samples=8)])
    monkeypatch.setattr(trust.unlearn, "probe", lambda *args: next(verdicts))
    result = unlearn(shapes_model, PRESETS["combination"], UnlearnConfig(max_steps=3, probe_every=1, stop_ira=0.9,
                                                                         **FAST))
    assert result.stop_reason == "max_steps" and result.message == (
        "ran all 3 steps; its probe found the target gone at step 2 (2 probes in all) but fewer than 90% of the "
        "neighbour samples right, so it went on (stop_ira)")


def test_keep_best_ends_with_the_weights_of_the_best_probe(shapes_model):
    config = UnlearnConfig(max_steps=8, probe_every=2, lr=0.05, keep_best=True, **{**FAST, "probe_samples": 4})
    probes, snapshots = {}, {}

    def inspect(unet, report):
        if report.probe is not None:
            probes[report.step] = report.probe
            snapshots[report.step] = {n: w.detach().clone() for n, w in candidate_weights(unet).items()}

    result = unlearn(shapes_model, PRESETS["combination"], config, inspect=inspect)
    assert set(probes) <= {2, 4, 6, 8} and result.steps in probes

    def score(p):
        return min(p.ua, p.ira), p.ua

    best = max(score(p) for p in probes.values())
    if result.stop_reason == "max_steps":  # (a probe that finds the target gone stops the job where it is)
        assert score(probes[result.steps]) == best
        assert result.steps == min(s for s, p in probes.items() if score(p) == best)
        assert len(result.reports) == result.steps and max(result.mask_history) < result.steps
        if result.steps < 8:
            assert f"kept the weights of step {result.steps}" in result.message
    kept, base = candidate_weights(result.unet), candidate_weights(shapes_model.unet)
    # (as a delta gives them back: w + (e − w), e to an ulp)
    assert all(torch.equal(kept[n], base[n] + (w - base[n])) for n, w in snapshots[result.steps].items())


def test_nan_stops_with_the_last_good_weights(shapes_model, monkeypatch):
    import trust.harness

    # the UNet's target made NaN (η = 1e30 did it, before η was bounded)
    monkeypatch.setattr(trust.harness, "negative_guidance_target", lambda anchor, target, eta: anchor * float("nan"))
    config = UnlearnConfig(max_steps=10, probe_every=0, **FAST)
    result = unlearn(shapes_model, PRESETS["combination"], config)
    assert result.stop_reason == "nan" and result.steps == 0
    assert "kept the weights of step 0" in result.message
    assert all(torch.equal(a, b) for a, b in zip(result.unet.parameters(), shapes_model.unet.parameters()))
    assert all(torch.isfinite(p).all() for p in result.unet.parameters())


def test_stop_event_ends_the_job_within_a_step(shapes_model):
    stop = threading.Event()

    def on_step(report):
        if report.step == 2:
            stop.set()

    result = unlearn(shapes_model, PRESETS["conditional"], UnlearnConfig(max_steps=50, probe_every=0, **FAST),
                     callback=on_step, stop_event=stop)
    assert result.stop_reason == "stopped" and result.steps == 2


def test_trust_plus_preservation_and_fisher_and_top_fraction(shapes_model, tmp_path):
    from trust.artifacts import DELTA_FILE, load_erased, save_delta

    config = UnlearnConfig.for_method("trust+p", max_steps=3, probe_every=0, hessian="fisher", rho=0.05, **FAST)
    result = unlearn(shapes_model, PRESETS["combination"], config)
    assert all(r.losses["pres"] >= 0 for r in result.reports)
    assert result.reports[-1].losses["pres"] > 0
    assert result.reports[0].num_selected == round(0.05 * 2 * (3 * 32 + 4 * 64))  # K and V rows of 7 layers
    save_delta(tmp_path / DELTA_FILE, shapes_model, result.unet)  # w + (e − w) is not always e in float32: the
    erased = load_erased(shapes_model, tmp_path)                    # erase's weights are those a delta gives back
    assert all(torch.equal(a, b) for a, b in zip(result.unet.parameters(), erased.unet.parameters()))


@pytest.mark.parametrize(("k", "images", "scenes"), [(0, 2, 0), (3, 4, 3), (6, 2, 6), (10**6, 2, 63)])
def test_preservation_keeps_the_neighbours_and_the_retain_scenes(shapes_model, k, images, scenes):
    from trust.concepts import retain_prompts
    from trust.harness import prepare

    scenario = PRESETS["combination"]  # 72 scenes: 3 red circles and 6 measured ones leave 63
    config = UnlearnConfig.for_method("trust+p", **{**FAST, "num_train_images": images, "retain_prompts": k,
                                                    "data_steps": 2})
    prepared = prepare(shapes_model, scenario, config)
    h = prepared.harness
    assert prepared.retain == retain_prompts(scenario, k) and len(prepared.retain) == scenes  # as many as asked
    assert h.preserve_x0.shape[0] == h.preserve_c.shape[0] == images + scenes  # neighbour images, then one a scene
    assert h.retain_x0.shape[0] == h.preserve_x0.shape[0] + images // 2  # and the anchor's images
    with torch.no_grad():
        encoded = shapes_model.encode_prompts(list(prepared.retain) or [""])
    for i in range(scenes):  # image i of the retain scenes carries the prompt of scene i
        assert torch.equal(h.preserve_c[images + i], encoded[i])
    assert torch.equal(h.retain_x0[images // 2 :], h.preserve_x0)


def test_trust_plus_leaves_the_neighbours_keys_and_values_alone(shapes_model):
    """keep_energy: the K/V update moves the target's text states, not the neighbours' (§8)."""
    scenario = PRESETS["combination"]
    with torch.no_grad():
        kept = shapes_model.encode_prompts([*scenario.neighbours, ""]).flatten(0, 1)  # (K, D)
        target = shapes_model.encode_prompts(list(scenario.targets)).flatten(0, 1)
    moved, target_moved = {}, {}
    for energy in (0.0, 0.999):
        config = UnlearnConfig.for_method("trust+p", keep_energy=energy, max_steps=4, probe_every=0, lr=0.05,
                                          **FAST)
        result = unlearn(shapes_model, scenario, config)
        edited = dict(result.unet.named_parameters())
        deltas = [(edited[n] - w).detach() for n, w in candidate_weights(shapes_model.unet).items()]
        moved[energy] = sum((d @ kept.T).norm() for d in deltas)  # how far the kept prompts' keys/values move
        target_moved[energy] = sum((d @ target.T).norm() for d in deltas)
    # the target's keys and values move either way; the neighbours' hardly with the projection
    assert target_moved[0.999] > 0
    assert moved[0.0] > 0.3 * target_moved[0.0]
    assert moved[0.999] < 0.05 * moved[0.0]


def test_key_value_preservation_keeps_the_kept_prompts_keys_and_values(shapes_model):
    """lambda_kv: the masked rows' change moves the kept prompts' keys and values less (the target's move too: on
    this model its token states share most directions with theirs)."""
    from trust.harness import prepare

    scenario = PRESETS["combination"]
    moved, target_moved, losses = {}, {}, {}
    base = UnlearnConfig.for_method("trust+p", max_steps=10, probe_every=0, lr=0.01, **FAST)
    kept = prepare(shapes_model, scenario, dataclasses.replace(base, lambda_kv=1.0)).harness.keep_states
    with torch.no_grad():
        target = shapes_model.encode_prompts(list(scenario.targets)).flatten(0, 1)
    for weight in (0.0, 1000.0):
        config = dataclasses.replace(base, lambda_kv=weight)
        result = unlearn(shapes_model, scenario, config)
        edited = dict(result.unet.named_parameters())
        deltas = [(edited[n] - w).detach() for n, w in candidate_weights(shapes_model.unet).items()]
        moved[weight] = sum((d @ kept.T).norm() for d in deltas)
        target_moved[weight] = sum((d @ target.T).norm() for d in deltas)
        losses[weight] = [r.losses.get("kv") for r in result.reports]
    assert losses[0.0] == [None] * 10 and losses[1000.0][0] == 0 and losses[1000.0][-1] > 0  # reported when on
    assert moved[1000.0] < 0.7 * moved[0.0]  # measured: 0.59
    assert target_moved[1000.0] > 0


def test_whitened_update_moves_each_whitened_coordinate_by_the_rate(shapes_model):
    """whiten: the first masked Adam step moves W~ = W·S^-1 by ±lr in every coordinate of a masked K/V row
    (Adam's first step is the sign of the gradient), S the whitener of the job's token states."""
    from trust.harness import prepare
    from trust.unlearn import text_whitener

    scenario = PRESETS["combination"]
    config = UnlearnConfig.for_method("trust+p", whiten=0.1, max_steps=1, probe_every=0, lr=0.01, **FAST)
    s_inv = torch.linalg.inv(text_whitener(prepare(shapes_model, scenario, config).harness.text_states, 0.1))
    result = unlearn(shapes_model, scenario, config)
    edited = dict(result.unet.named_parameters())
    rows = 0
    for name, w in candidate_weights(shapes_model.unet).items():
        selected = result.mask_history[0].get(name, [])
        if not selected:
            continue
        step = ((edited[name] - w).detach()[selected] @ s_inv).abs()
        assert step.median() == pytest.approx(0.01, rel=0.01)  # |Adam's first step| = lr (up to eps)
        rows += len(selected)
        raw = (edited[name] - w).detach()[selected].abs()
        assert raw.max() > 0.02 or raw.min() < 0.005  # in W's own coordinates the step is not ±lr
    assert rows > 0


def test_shapes_model_refuses_a_concept_it_cannot_see(shapes_model):
    from trust.concepts import scenario_from_prompts
    from trust.errors import TrustError

    for target, why in (("a dog", "it names no colour (red, green"),  # no ShapesWorld word
                        ("a red circle and a blue square",  # two scenes in one
                         "it names two colours ('red', 'blue') and two shapes ('circle', 'square')"),
                        ("a red " + "very " * 100 + "big shape, blue",  # quoted by its start; its words all read
                         "the target 'a red very very very")):
        with pytest.raises(TrustError, match="can only erase a colour, a shape, a background") as error:
            unlearn(shapes_model, scenario_from_prompts(target, []), UnlearnConfig(max_steps=1, **FAST))
        assert why in str(error.value) and len(str(error.value)) < 400
    assert "…' is not one such concept: it names two colours ('red', 'blue')" in str(error.value)


def test_unlearn_runs_on_stable_diffusion(tiny_sd_dir):
    from trust.concepts import scenario_from_prompts
    from trust.models import load_model

    model = load_model(tiny_sd_dir)
    scenario = scenario_from_prompts("a photo of a nude person", ["a photo of a person wearing clothes"],
                                     anchor="a photo of a person")
    result = unlearn(model, scenario, UnlearnConfig(max_steps=2, probe_every=5, **FAST))
    assert result.steps == 2 and result.stop_reason == "max_steps"
    assert result.reports[-1].probe is None  # no detector on this model: no probe
    assert result.scenario.target_anchors == ("a photo of a person",)  # a given anchor is kept
    # a colour word makes ShapesWorld anchors ("a green shape"); another model gets the empty prompt instead
    worded = scenario_from_prompts("a red car", [])
    assert worded.target_anchors == ("a green shape",)
    result = unlearn(model, worded, UnlearnConfig(max_steps=1, probe_every=5, **FAST))
    assert result.scenario.target_anchors == ("",)


def test_each_target_image_is_guided_by_its_own_prompts_anchor(shapes_model):
    from trust.harness import prepare

    scenario = PRESETS["red"]  # four targets, four anchors: "a red circle" -> "a green circle", ...
    h = prepare(shapes_model, scenario, UnlearnConfig.for_method("trust+p", **{**FAST, "num_train_images": 8})).harness
    with torch.no_grad():
        targets = shapes_model.encode_prompts(list(scenario.targets))
        anchors = shapes_model.encode_prompts(list(scenario.target_anchors))
    assert h.target_c.shape == h.anchor_c.shape == (8, *targets.shape[1:])
    for i in range(8):  # image i is of target i mod 4, and carries that target's anchor
        assert torch.equal(h.target_c[i], targets[i % 4]) and torch.equal(h.anchor_c[i], anchors[i % 4])
    _, _, c_f, c_a = h.target_batch()
    pairs = {(t.sum().item(), a.sum().item()) for t, a in zip(targets, anchors)}
    assert all((f.sum().item(), a.sum().item()) in pairs for f, a in zip(c_f, c_a))
    # every anchor also has images among the retain data (CSR and SalUn's retain loss)
    assert {a.sum().item() for a in anchors} <= {c.sum().item() for c in h.retain_c[:4]}


@pytest.mark.parametrize("paraphrases", [True, False])
def test_probe_spreads_over_other_wordings_of_the_target(shapes_model, monkeypatch, paraphrases):
    import trust.harness as harness

    asked = []
    real_generate = harness.generate

    def recording_generate(model, prompts, **kwargs):
        asked.extend(prompts)
        return real_generate(model, prompts, **kwargs)

    monkeypatch.setattr(harness, "generate", recording_generate)
    scenario = PRESETS["combination"]
    config = UnlearnConfig(probe_samples=4, probe_steps=2, probe_neighbours=False, probe_paraphrases=paraphrases)
    found = harness.probe(shapes_model, shapes_model.unet, scenario, config)
    assert found.num_samples == 4 and len(asked) == 4
    other_wordings = [p for p in asked if p not in scenario.targets]
    assert len(other_wordings) == (2 if paraphrases else 0)
    assert set(other_wordings) <= set(scenario.paraphrases)


def test_metrics_also_count_neighbours_said_other_ways(shapes_model):
    from trust.metrics import measure

    scenario = PRESETS["combination"]
    metrics = measure(shapes_model, scenario, num_samples=2, max_paraphrases=2, neighbour_wordings=2)
    others = [p for p in metrics["per_prompt"] if p not in (*scenario.ua_prompts, *scenario.neighbours,
                                                               *scenario.unrelated)]
    assert len(others) == 4  # two wordings of each neighbour, none of them a neighbour itself
    assert metrics["IRA_wordings"] == sum(metrics["per_prompt"][p] for p in others) / 4
    assert metrics["IRA"] >= 0.5 and metrics["IRA_wordings"] >= 0.5  # the original model draws them right
    assert "IRA_wordings" not in measure(shapes_model, scenario, num_samples=1, max_paraphrases=1)
