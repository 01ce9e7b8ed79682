"""Distillation: loss values on hand-computed cases, every form end to end on digits, teacher
caching that changes nothing but memory, and clear errors for bad settings."""

import math

import pytest
import torch
import torch.nn as nn

import pare
from pare.config import from_dict
from pare.errors import ConfigError, UnsupportedModelError
from pare.recipes.schema import TrainConfig
from pare.techniques.distill import DistillConfig
from pare.techniques.distill.apply import _check_outputs
from pare.techniques.distill.losses import feature_loss, info_nce, kd_loss, soft_targets
from tests.helpers import accuracy, trained

FAST = TrainConfig(epochs=3, lr=1e-2, patience=None)


@pytest.fixture(scope="module")
def teacher(digits_split):
    return trained(digits_split, "cnn", epochs=8, width=16)


def distill(teacher, split, train=FAST, **config):
    return pare.compress(teacher, from_dict(DistillConfig, config), split, train=train)


def test_kd_loss_matches_hand_computed_values_and_scales_with_t_squared():
    # uniform student, one-hot teacher: KL = log 2, whatever the temperature, times T^2
    student, target = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    assert kd_loss(student, target, 1.0).item() == pytest.approx(math.log(2))
    assert kd_loss(student, target, 2.0).item() == pytest.approx(4 * math.log(2))
    # logits [2, 0] vs teacher [0, 2] at T=2: both softened to sigmoid(+-1), KL = (s(1)-s(-1)) * 1
    s1 = 1 / (1 + math.exp(-1))
    teacher_probs = soft_targets([torch.tensor([[0.0, 2.0]])], 2.0)
    assert teacher_probs[0, 1].item() == pytest.approx(s1)
    loss = kd_loss(torch.tensor([[2.0, 0.0]]), teacher_probs, 2.0)
    assert loss.item() == pytest.approx(4 * (2 * s1 - 1), rel=1e-5)


def test_multi_teacher_targets_average_fix_weights_or_trust_the_confident_teacher():
    a, b = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    pa, pb = torch.softmax(a, 1), torch.softmax(b, 1)
    assert torch.allclose(soft_targets([a, b], 1.0), (pa + pb) / 2)
    assert torch.allclose(soft_targets([a, b], 1.0, "fixed", [3.0, 1.0]), 0.75 * pa + 0.25 * pb)
    # label 0: teacher a is right, so it gets softmax(-CE) weight, most of the mass
    conf = soft_targets([a, b], 1.0, "confidence", labels=torch.tensor([0]))
    ce = torch.tensor([-math.log(pa[0, 0]), -math.log(pb[0, 0])])
    w = torch.softmax(-ce, 0)
    assert torch.allclose(conf, w[0] * pa + w[1] * pb)
    assert conf[0, 0] > 0.7


def test_feature_and_contrastive_losses_on_known_inputs():
    x = torch.randn(4, 3, 2, 2)
    assert feature_loss(x, x, "mse").item() == 0
    assert feature_loss(x, x, "cosine").item() == pytest.approx(0, abs=1e-6)
    assert feature_loss(x, -x, "cosine").item() == pytest.approx(2)
    eye = torch.eye(2)
    # positives score 1, the one negative 0, at temperature 1: -log(e / (e + 1))
    assert info_nce(eye, eye, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    negatives = torch.tensor([[0.0, 1.0]])  # a memory entry equal to sample 1's positive
    assert info_nce(eye, eye, 1.0, negatives).item() > info_nce(eye, eye, 1.0).item()


def test_logit_distillation_trains_a_much_smaller_student(teacher, digits_split):
    train = TrainConfig(epochs=10, lr=1e-2, patience=None)
    student, info = distill(teacher, digits_split, train, student={"name": "cnn", "args": {"width": 8}})
    assert info["params_ratio"] > 3.5
    assert sum(p.numel() for p in student.parameters()) == info["student_params"]
    assert student(digits_split.test.X[:3]).shape == (3, 10)
    assert accuracy(student, digits_split.test) > 0.85
    kd = [e["kd"] for e in info["history"].epochs]
    assert kd[-1] < kd[0]  # the student moves towards the teacher
    assert info["teacher_cache_bytes"] == len(digits_split.train) * 10 * 4


def test_without_a_student_the_input_model_learns_from_named_teachers(teacher, digits_split):
    weak = trained(digits_split, "cnn", epochs=1, width=8, seed=3)
    before = accuracy(weak, digits_split.test)
    config = from_dict(DistillConfig, {"teachers": [{"stage": "baseline"}]})
    student, info = pare.compress(weak, config, digits_split, baseline=teacher, train=FAST)
    assert info["student"] == "the stage's input model" and info["params_ratio"] > 3
    assert accuracy(student, digits_split.test) > before


def test_embedding_distillation_term_is_one_minus_cosine():
    from pare.techniques.distill.hook import DistillHook, TeacherBank

    teacher_out = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=1)
    bank = TeacherBank([], [], None)
    bank.cache = {"logits0": teacher_out}
    hook = DistillHook(
        bank,
        from_dict(DistillConfig, {"teachers": [{"stage": "baseline"}], "alpha": 0.5}),
        None,
        [],
        {},
        None,
        None,
        embeddings=True,
    )
    student_out = torch.tensor([[0.0, 1.0], [1.0, 0.0]])

    class State:
        outputs, inputs, indices, targets = student_out, None, torch.tensor([0, 1]), None

    # cosines 0 and 1/sqrt(2): alpha x mean(1 - cosine)
    assert hook.loss_terms(State)["kd"].item() == pytest.approx(0.5 * (1 + (1 - 2**-0.5)) / 2, rel=1e-6)


def test_cached_teacher_outputs_change_nothing_but_memory(teacher, digits_split):
    spec = {
        "student": {"name": "cnn", "args": {"width": 4}},
        "features": [{"teacher": "features.3", "student": "features.3"}],
    }
    _, cached = distill(teacher, digits_split, **spec)
    _, live = distill(teacher, digits_split, cache_teacher=False, **spec)
    assert "teacher_cache_bytes" not in live
    for a, b in zip(cached["history"].epochs, live["history"].epochs):
        assert a["kd"] == pytest.approx(b["kd"], rel=1e-5)
        assert a["feat:features.3"] == pytest.approx(b["feat:features.3"], rel=1e-5)


def test_feature_multi_teacher_crd_and_born_again_run_and_report(teacher, digits_split):
    _, feat = distill(
        teacher,
        digits_split,
        student={"name": "cnn", "args": {"width": 4}},
        features=[{"teacher": "features.0", "student": "features.0", "loss": "cosine"}],
    )
    assert feat["adapter_params"] == 4 * 16 + 16  # 1x1 conv from 4 to 16 channels
    _, multi = distill(
        teacher,
        digits_split,
        student={"name": "cnn", "args": {"width": 4}},
        teachers=[{"stage": "baseline"}, {"name": "mlp", "args": {"width": 32, "depth": 1}}],
        weighting="confidence",
    )
    assert [t["source"] for t in multi["teachers"]] == ["stage baseline", "mlp (trained here)"]
    _, crd = distill(
        teacher,
        digits_split,
        student={"name": "cnn", "args": {"width": 4}},
        crd={"negatives": "memory", "memory_size": 128},
        alpha=0.5,
    )
    assert crd["crd_layers"] == {"teacher": "head.3 (input)", "student": "head.3 (input)"}
    assert all(e["crd"] > 0 for e in crd["history"].epochs)
    _, born = distill(teacher, digits_split, student={"shrink": 0.5}, generations=2)
    assert [g["generation"] for g in born["generations"]] == [1, 2]
    assert born["kept_generation"] in (1, 2)
    assert born["params_ratio"] == pytest.approx(2, rel=0.25)


def test_bad_settings_are_named(teacher, digits_split):
    with pytest.raises(ConfigError, match="student: without a student the stage.s input model is trained"):
        from_dict(DistillConfig, {})
    with pytest.raises(ConfigError, match="exactly one of name"):
        from_dict(DistillConfig, {"student": {"name": "cnn", "shrink": 0.5}})
    with pytest.raises(ConfigError, match="not a zoo model"):
        from_dict(DistillConfig, {"student": {"name": "cnnn"}})
    with pytest.raises(ConfigError, match="weight on every teacher"):
        from_dict(
            DistillConfig,
            {"student": {"shrink": 0.5}, "weighting": "fixed", "teachers": [{"stage": "baseline"}]},
        )
    with pytest.raises(
        ConfigError,
        match=r"features\[0\].teacher: no layer 'features\.9' \(did you mean 'features\.3'\?\); layers: features, ",
    ):
        distill(
            teacher,
            digits_split,
            student={"shrink": 0.5},
            features=[{"teacher": "features.9", "student": "features.0"}],
        )
    with pytest.raises(ConfigError, match="'basline' is not an earlier stage"):
        distill(teacher, digits_split, student={"shrink": 0.5}, teachers=[{"stage": "basline"}])
    with pytest.raises(
        UnsupportedModelError, match=r"teacher 1 returns outputs of shape \(2, 3\) but the student \(2, 10\)"
    ):
        _check_outputs([nn.Linear(4, 3)], nn.Linear(4, 10), torch.zeros(2, 4))


def test_recipe_with_distill_runs_and_resumes(tmp_path, fast_recipe):
    recipe = fast_recipe(
        model={"name": "cnn", "args": {"width": 8}},
        stages=[
            {"technique": "distill", "name": "kd", "student": {"name": "cnn", "args": {"width": 4}}},
            {"technique": "distill", "name": "thin", "from": "baseline", "student": {"shrink": 0.5}},
        ],
    )
    first = pare.run(recipe, tmp_path, report=False)
    again = pare.run(recipe, tmp_path, resume=True, report=False)
    for a, b in zip(first["stages"], again["stages"]):
        assert a["metrics"]["accuracy"] == b["metrics"]["accuracy"]
    kd = first["stages"][1]
    assert kd["comparison"]["params_ratio"] > 3 and kd["comparison"]["size_ratio"] > 2
