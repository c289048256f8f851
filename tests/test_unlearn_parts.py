"""The pure parts of TRuST: concepts, masks, losses, curvature, the masked optimizer."""

import pytest
import torch

from trust.concepts import (
    PRESETS,
    UNRELATED,
    Concept,
    Scenario,
    check_scenario,
    concept_anchor,
    concept_neighbours,
    generated_right,
    retain_prompts,
    scenario_from_prompts,
)
from trust.errors import TrustError
from trust.hessian import fisher_diagonal, hutchinson_diagonal, normalise
from trust.losses import (
    concept_inhibition_loss,
    key_value_preservation_loss,
    negative_guidance_target,
    sensitivity_loss,
)
from trust.neurons import NeuronMask, z_scores
from trust.optim import MaskedAdam
from trust.shapes.detector import Verdict
from trust.shapes.world import BACKGROUNDS, parse_prompt
from trust.unlearn import Probe, UnlearnConfig, scheduled_lr, target_gone, text_whitener


def verdict(color, shape, background="plain"):
    return Verdict(color, shape, background, 1.0, 1.0, 1.0)


def test_combination_is_present_only_with_both_parts():
    concept = PRESETS["combination"].concept
    assert concept.kind == "combination"
    assert concept.present(verdict("red", "circle"))
    assert not concept.present(verdict("red", "square"))
    assert not concept.present(verdict("blue", "circle"))
    assert not concept.present(verdict("none", "none"))


def test_conditional_is_present_only_in_its_context():
    concept = PRESETS["conditional"].concept
    assert concept.kind == "conditional"
    assert concept.present(verdict("green", "circle", "striped"))
    assert not concept.present(verdict("green", "circle", "plain"))
    assert not concept.present(verdict("green", "square", "striped"))


def test_individual_concepts_and_prompt_parsing():
    assert PRESETS["red"].concept.kind == "individual"
    assert PRESETS["red"].concept.present(verdict("red", "star", "dotted"))
    assert PRESETS["triangle"].concept.present(verdict("blue", "triangle"))
    assert Concept.from_prompt("a crimson disc").attributes == (("color", "red"), ("shape", "circle"))
    assert Concept.from_prompt("a circle on a striped background").kind == "conditional"
    # two colours (or shapes, or backgrounds) are two scenes, not one concept of this world: words only
    for prompt in ("a red circle and a blue square", "a circle or a square", "a striped dotted star"):
        concept = Concept.from_prompt(prompt)
        assert not concept.detectable and concept.attributes == (("text", prompt),)
    assert Concept.from_prompt("a red circle with a red outline").attributes == (("color", "red"), ("shape", "circle"))
    # an anchor or neighbour that leaves part of the concept open may show it: said, not refused
    from trust.concepts import left_open, open_prompt_warnings, scenario_from_prompts
    red_circle = Concept.from_prompt("a red circle")
    assert left_open(red_circle, "a red shape") == ("shape",) and left_open(red_circle, "a circle") == ("color",)
    assert left_open(red_circle, "a blue shape") == () and left_open(red_circle, "a green circle") == ()
    assert left_open(Concept.from_prompt("a circle on a striped background"), "a circle") == ()  # plain, said or not
    said = open_prompt_warnings(scenario_from_prompts("a red circle", ["a red shape", "a blue circle"],
                                                      anchor="a circle"))
    assert said == ["the anchor 'a circle' leaves the colour open, so the model may draw the target (color=red + "
                    "shape=circle) for it, and the erasure has little to push away from: an anchor that names it "
                    "erases (see the README)",
                    "the neighbour 'a red shape' leaves the shape open, so the model may draw the target (color=red + "
                    "shape=circle) for it, and keeping it keeps the target too: name it"]
    assert open_prompt_warnings(PRESETS["combination"]) == open_prompt_warnings(PRESETS["conditional"]) == []

    # a background is a word of its own, not letters inside another ("explained" names no plain background)
    assert Concept.from_prompt("a red circle, explained").attributes == (("color", "red"), ("shape", "circle"))
    assert Concept.from_prompt("a circle, dotted").attributes == (("shape", "circle"), ("background", "dotted"))
    assert generated_right("a circle on a plain background", verdict("blue", "circle"))
    assert not generated_right("a red square", verdict("red", "square", "dotted"))
    # paraphrases cover other templates and synonyms of the target
    paraphrases = PRESETS["combination"].paraphrases
    assert "a scarlet disc" in paraphrases and "a disc that is crimson" in paraphrases


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"target": "  "}, "must not be empty"),
    ({"target": "a red circle", "anchor": "a red circle"}, "equals the anchor"),
    ({"target": "a red circle", "anchor": " A Red  circle "}, "equals the anchor"),  # whatever the case and spaces
    ({"target": "a red circle", "neighbours": ["a red circle"]}, "is also a target"),
    ({"target": "a red circle", "neighbours": ["A red circle"]}, "is also a target"),
    ({"target": "a red circle", "neighbours": ["a red square", " "]}, "an empty neighbour prompt"),
    ({"target": "a red circle", "more_targets": ("a red star", "A red  circle")},
     "the target 'A red circle' is given twice; give each prompt once"),
    ({"target": "a red circle", "neighbours": ["a red square", "a red square "]}, "'a red square' is given twice"),
])
def test_bad_scenarios(kwargs, message):
    kwargs = {"neighbours": [], **kwargs}
    with pytest.raises(ValueError, match=message):
        scenario_from_prompts(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    # what must be kept must not show the concept: another wording, or a scene that holds it
    ({"target": "a red circle", "neighbours": ["a crimson disc"]}, "neighbour 'a crimson disc' shows the concept"),
    ({"target": "a star on a dotted background", "neighbours": ["a blue star on a dotted background"]},
     "shows the concept being erased"),
    ({"target": "red", "unrelated": ["a red star"]}, "unrelated prompt 'a red star' shows the concept"),
    # and must be one scene the detector can read
    ({"target": "a red circle", "neighbours": ["asdf qwerty"]}, "'asdf qwerty' is not one scene of this world"),
    ({"target": "a red circle", "neighbours": ["a green blue square"]}, "or two of a kind"),
    # an anchor must not show the concept
    ({"target": "a red circle", "anchor": "a crimson disc"}, "anchor 'a crimson disc' shows the concept"),
    ({"target": "a circle on a striped background", "anchor": "a red circle on a striped background"},
     "the anchor is what 'a circle on a striped background' becomes"),
    # a prompt of thousands of characters is cut in the message, which stays one short line
    ({"target": "a red circle", "anchor": "a red circle " * 800},
     r"^anchor 'a red circle a red circle a red .{,30}…' "),
    ({"target": "a red circle", "neighbours": ["a crimson disc " * 700]}, r"^neighbour 'a crimson disc .{,60}…' shows"),
])
def test_scenarios_the_detector_could_not_measure(kwargs, message):
    scenario = scenario_from_prompts(**{"neighbours": [], **kwargs})  # any model could erase it ...
    with pytest.raises(ValueError, match=message) as error:
        check_scenario(scenario)  # ... not ShapesWorld, whose detector measures it
    assert len(str(error.value)) < 300


def test_default_unrelated_prompts_never_show_the_concept_or_repeat_a_prompt():
    for target, neighbours in (("a blue star", ["a blue circle", "a green star"]), ("star", []),
                               ("a green triangle", []), ("a purple square on a plain background", [])):
        scenario = scenario_from_prompts(target, neighbours)
        assert len(scenario.unrelated) == len(UNRELATED) == len(set(scenario.unrelated))
        taken = {parse_prompt(p) for p in (target, *neighbours)}
        for prompt in scenario.unrelated:
            assert not scenario.concept.present(parse_prompt(prompt)) and parse_prompt(prompt) not in taken
    # "a blue star" is one of UNRELATED: the first spare scene takes its place, the others stay in order
    assert scenario_from_prompts("a blue star", []).unrelated == (*UNRELATED[:3], "an orange circle on a striped "
                                                                                 "background")
    # a neighbour (a circle on a plain background) is not the conditional concept: it may be kept
    assert scenario_from_prompts(None, [], preset="conditional").unrelated == PRESETS["conditional"].unrelated


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tau": 11.0}, "tau must be within"),
    ({"tau": None, "rho": 0.0}, "rho must be within"),
    ({"tau": None, "rho": 1.5}, "rho must be within"),
    ({"rho": 0.1}, "exactly one of tau"),
    ({"eta": 0.0}, "eta must be > 0"),
    ({"eta": -1.0}, "eta must be > 0"),
    ({"eta": 1e5}, "eta must be > 0 and at most 100 .*got 100000"),  # (it ran, and broke everything)
    ({"lambda_csr": 1e7}, "lambda_csr must be within 0..1e\\+06"),
    ({"max_steps": 0}, "max_steps must be a whole number within 1..10000"),
    ({"max_steps": 10**9}, "max_steps must be a whole number within 1..10000"),  # one job would hold the server
    ({"seed": -1}, "seed must be a whole number within 0..4294967295"),
    ({"max_steps": True}, "max_steps must be a whole number, got True"),  # (a bool is an int to Python)
    ({"lr": "0.1"}, "lr must be a number, got '0.1'"),  # not a TypeError from deep inside
    ({"seed": 10**30}, "seed must be a whole number within"),
    ({"batch_size": 10**8}, "batch_size must be a whole number within 1..256"),  # not an out-of-memory trace
    ({"num_train_images": 10**7}, "num_train_images must be a whole number within 1..1024"),
    ({"lr": float("nan")}, "lr must be a positive number"),
    ({"lambda_pres": 5.0}, "use method 'trust\\+p'"),
    ({"method": "trust+p"}, "needs lambda_pres > 0"),
    ({"keep_energy": 0.99}, "use method 'trust\\+p'"),
    ({"method": "trust+p", "lambda_pres": 1.0, "keep_energy": 1.5}, "keep_energy must be within"),
    ({"method": "trust+p", "lambda_pres": 1.0, "keep_energy": 1.0}, r"keep_energy must be within \[0, 1\)"),
    ({"mask_every": -1}, "mask_every must be a whole number >= 0, got -1"),
    ({"probe_every": -2}, "probe_every must be a whole number >= 0, got -2"),
    ({"retain_prompts": -1}, "retain_prompts must be a whole number"),
    ({"stop_ira": 1.5}, "stop_ira must be within"),
    ({"max_changed": 0.0}, "max_changed must be within"),
    ({"whiten": -0.1}, "whiten must be within"),
    ({"lambda_kv": 1.0}, "use method 'trust\\+p' for lambda_kv"),
    ({"method": "trust+p", "lambda_pres": 1.0, "lambda_kv": -1.0},
     "lambda_kv must be within 0..1e\\+06 \\(a loss weight"),
    ({"schedule": "linear"}, "schedule must be"),
    ({"method": "esd-x", "schedule": "cosine"}, "keeps a constant rate"),
    ({"whiten": float("inf")}, "whiten must be within"),
    ({"method": "salun", "tau": None, "rho": 0.5, "whiten": 0.1}, "'salun' has none"),
    ({"method": "esd-x", "max_changed": 0.02}, r"'esd-x' has none \(leave it at 1, or .*for_method\('esd-x'"),
    ({"method": "magic"}, "not one of"),
    ({"projections": ("to_z",)}, "projections must be"),
    ({"projections": "to_k"}, "projections must be"),  # (a string is no list of projections)
    ({"keep_best": "no"}, "keep_best must be True or False, got 'no'"),  # a true string: it would turn it on
    ({"probe_paraphrases": "False"}, "probe_paraphrases must be True or False"),
    ({"hessian": 1}, "hessian must be a string"),
])
def test_bad_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UnlearnConfig(**kwargs)


def test_a_config_names_an_unknown_field_and_reads_a_list_of_projections():
    with pytest.raises(ValueError, match="no field named 'foo'; the fields are method, max_steps"):
        UnlearnConfig.for_method("trust", foo=1)  # (a misspelt field: not Python's bare TypeError)
    listed = UnlearnConfig.for_method("trust", projections=["to_k", "to_v"])
    assert listed == UnlearnConfig.for_method("trust") and listed.projections == ("to_k", "to_v")  # hashable too


def test_config_for_method_defaults():
    assert UnlearnConfig.for_method("trust+p").lambda_pres > 0
    assert UnlearnConfig.for_method("trust+p").max_changed == 0.02  # issue 3's bound on the weights changed
    assert UnlearnConfig.for_method("trust").max_changed == 1.0  # the paper's reading: no budget
    assert UnlearnConfig.for_method("trust").lambda_pres == 0
    config = UnlearnConfig.for_method("trust", rho=0.05, lr=None)
    assert config.tau is None and config.rho == 0.05 and config.lr == UnlearnConfig.lr


def test_stopping_rule_needs_the_neighbours_kept_where_asked():
    erased_but_harmful = Probe(ua=1.0, ira=0.5, num_samples=16)
    assert target_gone(erased_but_harmful, UnlearnConfig())  # trust, as the paper: the target alone decides
    assert not target_gone(erased_but_harmful, UnlearnConfig(stop_ira=0.9))
    assert target_gone(Probe(ua=1.0, ira=0.9, num_samples=16), UnlearnConfig(stop_ira=0.9))
    assert target_gone(Probe(ua=1.0, ira=None, num_samples=8), UnlearnConfig(stop_ira=0.9))  # no neighbours
    assert not target_gone(Probe(ua=0.9, ira=1.0, num_samples=16), UnlearnConfig(stop_ira=0.9))


def test_mask_by_z_score_and_by_fraction():
    z = z_scores({"a.to_k.weight": torch.tensor([0.0, 0.0, 0.0, 10.0]), "b.to_k.weight": torch.zeros(4),
                  "a.to_v.weight": torch.tensor([1.0, 2.0, 3.0, 4.0])})
    by_tau = NeuronMask.from_z(z, tau=2.0)
    assert by_tau.indices() == {"a.to_k.weight": [3]}  # to_v is normalised on its own: no outlier there
    by_rho = NeuronMask.from_z(z, rho=0.25)
    assert by_rho.num_selected == 3
    assert by_tau.churn(by_rho) == (0, 2)
    assert by_rho.union(by_tau).num_selected == 3


def test_a_budget_admits_new_neurons_most_salient_first_and_old_ones_free():
    z = {"a.to_k.weight": torch.tensor([5.0, 4.0, 3.0, 0.0]), "b.to_v.weight": torch.tensor([6.0, 0.0, 2.5, 1.0])}
    width = {"a.to_k.weight": 10, "b.to_v.weight": 20}
    mask = NeuronMask.from_z(z, tau=2.0)  # a: 0, 1, 2; b: 0, 2
    ever = NeuronMask({"a.to_k.weight": torch.tensor([False, False, True, True]),
                       "b.to_v.weight": torch.tensor([False, False, False, True])})  # 2 * 10 + 20 weights so far
    # 75 weights: 35 left after `ever`; a.2 is already changed (free), then b.0 (z 6, 20 weights) and
    # a.0 (z 5, 10 weights) fit, a.1 (10) no longer does, and b.2 (20) neither
    kept = mask.within_budget(ever, z, width, budget=75)
    assert kept.indices() == {"a.to_k.weight": [0, 2], "b.to_v.weight": [0]}
    assert kept.union(ever).per_layer() == {"a.to_k.weight": 3, "b.to_v.weight": 2}  # 30 + 40 = 70 <= 75
    assert mask.within_budget(None, z, width, budget=10**6).indices() == mask.indices()  # room for all
    assert mask.within_budget(ever, z, width, budget=40).indices() == {"a.to_k.weight": [2]}  # full: old only


def test_negative_guidance_and_cip_and_csr():
    eps_a, eps_f = torch.ones(2, 3), 3 * torch.ones(2, 3)
    torch.testing.assert_close(negative_guidance_target(eps_a, eps_f, 0.5), torch.zeros(2, 3))
    weights = {"x.to_k.weight": torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "x.to_q.weight": torch.ones(2, 2)}
    mask = NeuronMask({"x.to_k.weight": torch.tensor([False, True]), "x.to_q.weight": torch.tensor([True, True])})
    embeddings = torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    # only key/value rows read text: row 1 of to_k gives |2|, |-6| -> mean 4
    assert concept_inhibition_loss(weights, mask, embeddings).item() == pytest.approx(4.0)
    originals = {n: torch.zeros_like(w) for n, w in weights.items()}
    hessian = {n: torch.full_like(w, 2.0) for n, w in weights.items()}
    assert sensitivity_loss(weights, originals, hessian, mask).item() == pytest.approx(2 * 4 + 2 * 4)


def test_hutchinson_is_exact_on_a_diagonal_quadratic():
    a = torch.tensor([[1.0, 2.0], [3.0, 0.5]])
    w = torch.randn(2, 2, requires_grad=True)
    diag = hutchinson_diagonal(lambda: (a * w**2).sum(), {"w": w}, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(diag["w"], 2 * a)
    fisher = fisher_diagonal(lambda: (a * w).sum(), {"w": w}, 2)
    torch.testing.assert_close(fisher["w"], a**2)
    assert normalise({"w": torch.tensor([-1.0, 1.0, 3.0])})["w"].tolist() == [0.0, 0.75, 2.25]


def test_masked_adam_freezes_rows_and_state_outside_the_mask():
    w = torch.zeros(3, 2)
    optimizer = MaskedAdam({"w": w}, lr=0.1)
    grads = {"w": torch.ones(3, 2)}
    optimizer.step(grads, NeuronMask({"w": torch.tensor([True, True, False])}))
    after_first = w.clone()
    state = optimizer.exp_avg["w"].clone()
    assert (after_first[2] == 0).all() and (after_first[0] != 0).all()
    optimizer.step(grads, NeuronMask({"w": torch.tensor([False, True, True])}))
    assert torch.equal(w[0], after_first[0])  # left the mask: no drift on momentum
    assert torch.equal(optimizer.exp_avg["w"][0], state[0])
    assert optimizer.row_steps["w"].tolist() == [1, 2, 1]
    # a row that joins late gets the bias-corrected first step, the same size as everyone's first
    torch.testing.assert_close(w[2], after_first[0])


def test_preconditioned_adam_is_adam_in_whitened_coordinates():
    """MaskedAdam with S moves W as torch's Adam moves W~ = W·S^-1, and leaves unmasked rows alone."""
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(200, 4, generator=gen) * torch.tensor([5.0, 1.0, 0.3, 0.1]) + torch.tensor([3.0, 0, 0, 0])
    s = text_whitener(states, 0.01)
    target = torch.randn(3, 4, generator=gen)
    w = torch.randn(3, 4, generator=gen)
    w_tilde = (w @ torch.linalg.inv(s)).clone().requires_grad_(True)
    reference = torch.optim.Adam([w_tilde], lr=0.05)
    optimizer = MaskedAdam({"w": w}, lr=0.05, precondition={"w": s})
    mask = NeuronMask({"w": torch.tensor([True, True, False])})
    start = w.clone()
    for _ in range(5):
        loss = ((w_tilde @ s - target) @ states.T).pow(2).mean()  # a regression on the states, through W~
        reference.zero_grad()
        loss.backward()
        reference.step()
        w_now = w.clone().requires_grad_(True)
        grad = torch.autograd.grad(((w_now - target) @ states.T).pow(2).mean(), w_now)[0]
        optimizer.step({"w": grad}, mask)
    torch.testing.assert_close(w[:2], (w_tilde @ s)[:2].detach(), rtol=1e-4, atol=1e-5)  # rows are independent
    assert (w[:2] - start[:2]).abs().max() > 0.05
    assert torch.equal(w[2], start[2])


def test_key_value_preservation_is_the_masked_rows_relative_change_on_the_kept_states():
    gen = torch.Generator().manual_seed(2)
    originals = {"a.attn2.to_k.weight": torch.randn(3, 4, generator=gen), "a.attn2.to_q.weight": torch.randn(3, 4)}
    weights = {n: w.clone() for n, w in originals.items()}
    states = torch.randn(5, 4, generator=gen)
    mask = NeuronMask({n: torch.tensor([True, False, True]) for n in weights})
    assert key_value_preservation_loss(weights, originals, mask, states) == 0
    weights["a.attn2.to_k.weight"][0] += 0.5  # a masked K row moves: counted
    weights["a.attn2.to_k.weight"][1] += 9.0  # an unmasked row: not this loss's business
    weights["a.attn2.to_q.weight"][0] += 9.0  # a query row reads the image, not these states
    expected = (torch.full((4,), 0.5) @ states.T).pow(2).sum() / (originals["a.attn2.to_k.weight"][[0, 2]]
                                                                 @ states.T).pow(2).sum()
    torch.testing.assert_close(key_value_preservation_loss(weights, originals, mask, states), expected)


def test_cosine_schedule_falls_from_the_rate_to_near_zero():
    config = UnlearnConfig(lr=0.04, max_steps=100, schedule="cosine")
    assert scheduled_lr(config, 0) == 0.04
    assert scheduled_lr(config, 50) == pytest.approx(0.02)
    assert 0 < scheduled_lr(config, 99) < 0.04 * 0.001
    assert [scheduled_lr(UnlearnConfig(lr=0.04), k) for k in (0, 99)] == [0.04, 0.04]


def test_text_whitener_equalises_the_directions_states_use():
    gen = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(6, 6, generator=gen))[0]
    states = (torch.randn(500, 6, generator=gen) * torch.tensor([10.0, 3.0, 1.0, 0.5, 0.2, 0.1])) @ basis.T
    s = text_whitener(states, 1e-6)
    torch.testing.assert_close(s, s.T)
    moment = (states @ s).T @ (states @ s) / states.shape[0]
    eig = torch.linalg.eigvalsh(moment)
    assert eig.max() / eig.min() < 1.1  # raw: 10^4 between the largest and the smallest direction
    # scaled so that the whitened states keep their mean squared norm
    torch.testing.assert_close((states @ s).pow(2).sum(1).mean(), states.pow(2).sum(1).mean(), rtol=0.02, atol=0)
    # a larger ridge whitens less: the smallest direction is moved less easily than the largest one
    eig_ridge = torch.linalg.eigvalsh(((states @ text_whitener(states, 1.0)).T @ (states @ text_whitener(states, 1.0)))
                                      / states.shape[0])
    assert eig_ridge.max() / eig_ridge.min() > 10


def test_free_text_concepts_are_for_real_models():
    scenario = scenario_from_prompts("a photo of a nude person", ["a photo of a person wearing clothes"])
    assert scenario.concept.attributes == (("text", "a photo of a nude person"),)
    assert not scenario.concept.detectable and scenario.paraphrases == ()
    with pytest.raises(TrustError, match="cannot see it"):
        scenario.concept.present(verdict("red", "circle"))
    # spaces inside a prompt are one each, as the tokenizer reads them (the report and the echo said them all)
    spaced = scenario_from_prompts("  a   red \t circle ", ["a  blue   circle"], more_targets=("a red  star",))
    assert spaced.targets == ("a red circle", "a red star") and spaced.neighbours == ("a blue circle",)
    # several prompts of words: the concept is all of them, not the first
    scenario = scenario_from_prompts("Van Gogh", [], more_targets=("a painting in the style of Van Gogh",))
    assert scenario.concept.describe() == "text=Van Gogh / a painting in the style of Van Gogh"


def test_scenario_rejects_a_neighbour_equal_to_the_target():
    with pytest.raises(ValueError, match="is also a target"):
        Scenario("x", Concept((("color", "red"),)), targets=("a red star",), neighbours=("a red star",),
                 unrelated=())


@pytest.mark.parametrize("name", ["red", "triangle", "combination", "conditional"])
def test_retain_scenes_lack_the_concept_and_are_never_measured(name):
    scenario = PRESETS[name]
    retain = retain_prompts(scenario, 12)
    assert len(retain) == len(set(retain)) == 12
    measured = {(s.color, s.shape, s.background) for s in map(parse_prompt, scenario.targets + scenario.neighbours
                                                               + scenario.unrelated)}
    specs = [parse_prompt(p) for p in retain]
    for spec in specs:
        assert spec.color and spec.shape  # whole scenes, plainly worded
        assert not scenario.concept.present(verdict(spec.color, spec.shape, spec.background))
        assert not any(m[0] in (None, spec.color) and m[1] in (None, spec.shape) and m[2] == spec.background
                       for m in measured)
    assert {spec.background for spec in specs} == set(BACKGROUNDS)
    assert retain_prompts(scenario, 5) == retain[:5]
    assert retain_prompts(scenario, 0) == ()
    assert retain_prompts(scenario_from_prompts("a dog", []), 12) == ()  # no grammar for free text


@pytest.mark.parametrize(("prompt", "concept", "anchor"), [
    ("a red circle", {"color": "red"}, "a green circle"),  # the colour changes, the shape stays
    ("a crimson disc on a dotted background", {"color": "red"}, "a green circle on a dotted background"),
    ("a purple triangle", {"color": "purple"}, "an orange triangle"),
    ("an orange star", {"color": "orange"}, "a red star"),  # the world's colours wrap round
    ("a blue triangle", {"shape": "triangle"}, "a blue star"),
    ("a yellow star", {"shape": "star"}, "a yellow circle"),
    ("a red circle", {"color": "red", "shape": "circle"}, "a green circle"),  # a combination: its colour
    ("a circle on a striped background", {"shape": "circle", "background": "striped"}, "a circle"),  # context
    ("a red shape", {"color": "red"}, "a green shape"),
    ("a circle on a dotted background", {"background": "dotted"}, "a circle"),
    # a plain background's anchor leaves it (its scene with "plain" again would be the target itself)
    ("a square on a plain background", {"shape": "square", "background": "plain"},
     "a square on a striped background"),
    # a plain background the concept holds and the anchor keeps is said, not left to the default
    ("a red star on a plain background", {"color": "red", "shape": "star", "background": "plain"},
     "a green star on a plain background"),
])
def test_concept_anchor_changes_one_attribute_of_the_concept(prompt, concept, anchor):
    assert concept_anchor(prompt, Concept(tuple(concept.items()))) == anchor
    spec, anchor_spec = parse_prompt(prompt), parse_prompt(anchor)
    changed = [k for k in ("color", "shape", "background") if getattr(spec, k) != getattr(anchor_spec, k)]
    assert len(changed) == 1 and changed[0] in concept  # exactly one attribute, one of the concept's


def test_a_target_that_is_not_one_prompt_is_refused_with_the_way_to_give_several():
    with pytest.raises(ValueError, match="give the target as one prompt \\(a string\\), got list; more prompts"):
        scenario_from_prompts(["a red circle", "a red star"], None)
    assert scenario_from_prompts("a red circle", None, more_targets=("a red star",)).targets == (
        "a red circle", "a red star")


def test_every_prompt_of_the_world_gets_a_scenario_it_accepts():
    """Each wording of each scene the grammar can say, typed as the target, gets anchors and neighbours (derived,
    as `trust erase` and the app fill them in) that `check_scenario` accepts: a derived value is never refused."""
    from trust.forms import derived_anchor_text, derived_neighbours_text, scenario_from_form
    from trust.shapes.world import COLORS, SHAPES, all_prompts

    prompts = [t for c in (*COLORS, None) for s in (*SHAPES, None) if c or s for b in BACKGROUNDS
               for t in all_prompts(c, s, b)]
    assert len(prompts) > 900 and "a star on a plain background" in prompts
    for target in prompts:
        scenario = scenario_from_prompts(target, None)
        assert scenario.concept.detectable, target
        derived = concept_neighbours(scenario.targets, scenario.concept)
        check_scenario(scenario_from_prompts(target, list(derived)))  # `trust erase --target T`
        check_scenario(scenario_from_form(None, target, derived_anchor_text(target),
                                          derived_neighbours_text(target, None)))  # the app's filled-in form


@pytest.mark.parametrize(("targets", "neighbours"), [
    (("a red circle",), ("a red square", "a blue circle")),  # the combination preset's, derived
    (("a circle on a striped background",), ("a square on a striped background", "a circle on a plain background")),
    (("a yellow star",), ("a yellow circle", "an orange star")),
    (("green",), ("a yellow shape",)),  # a colour alone: another colour (not the anchor's blue)
    (("a crimson disc on a dotted background",), ("a red square on a dotted background",  # three attributes
                                                   "a blue circle on a dotted background",
                                                   "a red circle on a plain background")),
    (("a triangle on a plain background",), ("a star on a plain background", "a triangle on a dotted background")),
    (("a red circle", "a red star"), ("a blue circle", "a blue star")),  # the concept they share: red
    (("a shape on a dotted background",), ()),  # the world has no prompt for a bare background
    (("a photo of a dog",), ()),  # words only
])
def test_concept_neighbours_keep_the_scene_with_one_attribute_changed(targets, neighbours):
    from trust.concepts import common_concept, concept_anchors, concept_neighbours

    concept = common_concept(targets)
    assert concept_neighbours(targets, concept) == neighbours
    for neighbour in neighbours:  # each is a scene without the concept, differing from a target in one attribute
        spec = parse_prompt(neighbour)
        assert not concept.present(verdict(spec.color, spec.shape, spec.background))
        assert any(sum(getattr(spec, k) != getattr(parse_prompt(t), k) for k in ("color", "shape", "background"))
                   == 1 for t in targets)
    anchors = concept_anchors(targets, concept)
    assert not set(neighbours) & set(anchors)  # never what a target becomes (a background's plain may read alike)


def test_presets_anchor_each_target_and_a_given_anchor_wins():
    red = PRESETS["red"]
    assert red.target_anchors == ("a green circle", "a green square", "a green triangle", "a green star")
    assert PRESETS["conditional"].target_anchors == ("a circle",)
    specs = [parse_prompt(a) for a in red.target_anchors]
    assert not any(red.concept.present(verdict(spec.color, spec.shape)) for spec in specs)  # none is red
    assert scenario_from_prompts("a red circle", []).target_anchors == ("a green circle",)  # derived
    assert scenario_from_prompts("a red circle", [], anchor="").target_anchors == ("",)  # the empty prompt
    assert scenario_from_prompts(None, [], anchor="a box", preset="red").target_anchors == ("a box",) * 4
    two = scenario_from_prompts("a red circle", [], more_targets=("a red star",))
    assert two.targets == ("a red circle", "a red star") and two.target_anchors == ("a green circle", "a green star")
    assert two.concept.attributes == (("color", "red"),)  # what the two targets share
    assert scenario_from_prompts("a photo of a nude person", []).target_anchors == ("",)  # no grammar: empty


def test_scenario_targets_must_show_its_concept():
    with pytest.raises(ValueError, match="target 'a blue star' does not show the concept being erased"):
        check_scenario(Scenario("x", Concept((("color", "red"),)), targets=("a red circle", "a blue star"),
                                neighbours=(), unrelated=()))
    for preset in PRESETS.values():
        check_scenario(preset)  # every preset is measurable
    apart = scenario_from_prompts("a red circle", [], more_targets=("a blue square",))
    assert not apart.concept.detectable  # nothing shared: words, which ShapesWorld refuses (test_unlearn)
    three = scenario_from_prompts("a circle on a striped background", [],
                                  more_targets=("a blue circle on a striped background", "a disc, striped background"))
    assert three.concept.attributes == (("shape", "circle"), ("background", "striped"))
    assert scenario_from_prompts("a circle on a striped background", [], more_targets=("a circle",)).concept.kind \
        == "individual"  # a plain circle among the targets: circles everywhere


@pytest.mark.parametrize(("anchors", "message"), [
    (("a green circle",), "one anchor for every target"),
    (("a green circle", "a red star"), "equals the anchor"),
])
def test_bad_per_target_anchors(anchors, message):
    with pytest.raises(ValueError, match=message):
        Scenario("x", Concept((("color", "red"),)), targets=("a red circle", "a red star"), neighbours=(),
                 unrelated=(), anchors=anchors)
