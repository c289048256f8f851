"""Baselines and ablations on the real loop, tiny settings: what each one may change, and nothing else."""

import dataclasses

import pytest
import torch

from trust.baselines import esd_parameters, ffn_output_layers
from trust.concepts import PRESETS
from trust.unlearn import BASELINES, UnlearnConfig, unlearn

FAST = {"num_train_images": 2, "retain_prompts": 2,
        "batch_size": 2, "probe_samples": 1, "probe_steps": 4, "hessian_samples": 1,
        "data_steps": 5, "probe_every": 0}


def changed(result, model) -> dict[str, torch.Tensor]:
    """Parameter name -> element-wise "changed" mask, for every parameter that changed."""
    before = dict(model.unet.named_parameters())
    return {n: p != before[n] for n, p in result.unet.named_parameters() if not torch.equal(p, before[n])}


def test_esd_x_changes_only_cross_attention(shapes_model):
    result = unlearn(shapes_model, PRESETS["combination"], UnlearnConfig.for_method("esd-x", max_steps=2, **FAST))
    diff = changed(result, shapes_model)
    assert diff and all(".attn2." in n for n in diff)
    assert set(diff) == set(esd_parameters(shapes_model.unet, "esd-x"))  # Adam moves every trained weight
    total = sum(p.numel() for p in shapes_model.unet.parameters())
    assert result.changed_weights == sum(int(m.sum()) for m in diff.values())
    assert result.changed_fraction == pytest.approx(result.changed_weights / total)
    report = result.reports[-1]
    assert report.mask_sizes == {} and report.saliency_z == {} and report.top_neurons == ()
    assert set(report.losses) == {"unlearn", "total"} and result.mask_history == {}


def test_esd_u_changes_no_cross_attention(shapes_model):
    result = unlearn(shapes_model, PRESETS["combination"], UnlearnConfig.for_method("esd-u", max_steps=1, **FAST))
    diff = changed(result, shapes_model)
    assert diff and not any(".attn2." in n for n in diff)
    assert not any(n.startswith(("conv_out.", "time_embedding.")) for n in diff)
    assert result.changed_fraction > 0.5  # nearly the whole UNet


def test_salun_static_mask_keeps_the_rest_bit_for_bit(shapes_model):
    reports = []
    result = unlearn(shapes_model, PRESETS["combination"], UnlearnConfig.for_method("salun", max_steps=3, **FAST),
                     callback=reports.append)
    total = sum(p.numel() for p in shapes_model.unet.parameters())
    selected = reports[0].num_selected
    assert selected == pytest.approx(total / 2, rel=0.01)  # top 50% of |∇L_f|, ties aside
    assert [r.refreshed for r in reports] == [True, False, False]
    assert all(r.num_selected == selected for r in reports)
    # unmasked weights never move (zero gradient, zero Adam moments): at most the masked half changed
    assert 0 < result.changed_weights <= selected
    assert set(reports[-1].losses) == {"unlearn", "retain", "total"}


def test_salun_plus_plus_recomputes_its_mask(shapes_model):
    reports = []
    unlearn(shapes_model, PRESETS["combination"], UnlearnConfig.for_method("salun++", max_steps=3, **FAST),
            callback=reports.append)
    assert all(r.refreshed for r in reports)
    added, removed = reports[1].churn
    assert added > 0 and removed > 0  # a different half of the weights at step 2
    assert reports[-1].changed_fraction > 0.5  # the union of the masks grows past one mask


def test_conceptprune_zeroes_only_ffn_input_columns(shapes_model):
    result = unlearn(shapes_model, PRESETS["combination"], UnlearnConfig.for_method("conceptprune", **FAST))
    assert result.steps == 0 and result.stop_reason == "pruned" and result.reports == []
    pruned = result.mask_history[0]
    assert pruned and sum(map(len, pruned.values())) > 0
    layers = {f"{n}.weight" for n in ffn_output_layers(shapes_model.unet)}
    before = dict(shapes_model.unet.named_parameters())
    for name, param in result.unet.named_parameters():
        if name not in pruned:
            assert torch.equal(param, before[name]), name
            continue
        assert name in layers
        columns = pruned[name]
        assert (param[:, columns] == 0).all()
        keep = [j for j in range(param.shape[1]) if j not in set(columns)]
        assert torch.equal(param[:, keep], before[name][:, keep])
    assert result.train_seconds > 0
    from trust.erase import report_dict

    report = report_dict(result, None)  # its scoring time is no time per step: it takes none
    assert report["steps"] == 0 and report["seconds_per_step"] is None and report["train_seconds"] > 0


@pytest.mark.parametrize(("method", "field", "value"), [
    ("trust-static", "mask_every", 0), ("trust-no-cip", "lambda_cip", 0.0), ("trust-no-csr", "lambda_csr", 0.0)])
def test_ablations_differ_from_trust_in_one_field(method, field, value):
    trust, ablation = UnlearnConfig.for_method("trust"), UnlearnConfig.for_method(method)
    differ = {f.name for f in dataclasses.fields(UnlearnConfig)
              if getattr(trust, f.name) != getattr(ablation, f.name)}
    assert differ == {"method", field} and getattr(ablation, field) == value
    with pytest.raises(ValueError, match=f"defined by {field}"):
        UnlearnConfig.for_method(method, **{field: 5})


def test_baselines_have_their_own_defaults_and_checks():
    assert all(UnlearnConfig.for_method(m).method == m for m in BASELINES)
    assert UnlearnConfig.for_method("salun").mask_every == 0 and UnlearnConfig.for_method("salun++").mask_every == 1
    assert UnlearnConfig.for_method("esd-x").lr < UnlearnConfig.for_method("trust").lr  # dense: a smaller step
    with pytest.raises(ValueError, match="give rho"):
        UnlearnConfig.for_method("salun", tau=2.0)
    with pytest.raises(ValueError, match="no preservation term"):
        UnlearnConfig.for_method("esd-x", lambda_pres=1.0)
