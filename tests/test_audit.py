"""The evaluation model's audit (false acceptance, impostor Acc@1), the second evaluation model
(schema, plan keys, job graph, evaluator_agreement) and the MLflow numbers of the record's evaluator block."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from inversion_bench.cli import main
from inversion_bench.config import validate_suite
from inversion_bench.data import TensorFaces
from inversion_bench.data.splits import SplitSpec, make_splits
from inversion_bench.errors import ConfigError, MetricUnavailableError
from inversion_bench.interfaces import MetricContext, Reconstruction
from inversion_bench.jobs import job_graph
from inversion_bench.metrics.accuracy import topk_hits
from inversion_bench.metrics.agreement import EvaluatorAgreement
from inversion_bench.plan import make_plan
from inversion_bench.products.audit import (
    NOT_PRIVATE,
    audit,
    audit_key,
    audit_model,
    evaluator_summary,
    false_acceptance,
    impostor_acc1,
    top1,
)
from inversion_bench.registry import REGISTRIES, load_plugins
from inversion_bench.run_context import Held
from inversion_bench.store import Store, content_key
from inversion_bench.tracking import evaluator_metrics
from tests.conftest import tiny_suite

CPU = torch.device("cpu")
C = 4  # private identities of the hand-made splits


def _logits(pred: list[int], classes: int = 3) -> torch.Tensor:
    return nn.functional.one_hot(torch.tensor(pred), classes).float() + 0.01 * torch.arange(classes)


# --- the pure functions, against hand-computed values ---------------------------------------------

def test_false_acceptance_and_impostor_acc_by_hand():
    labels = torch.tensor([0, 1, 2, 2])
    logits = _logits([0, 2, 2, 0])
    assert false_acceptance(logits, labels) == pytest.approx(0.5)  # images 1 and 3 accepted as somebody else
    # claimed 0: impostors 1,2,3, accepted 3 -> 1/3; claimed 1: impostors 0,2,3, none -> 0;
    # claimed 2: impostors 0,1, accepted 1 -> 1/2
    assert impostor_acc1(logits, labels) == pytest.approx((1 / 3 + 0 + 1 / 2) / 3)


def test_public_images_are_always_accepted_under_top1():
    logits = _logits([0, 2, 2, 0])
    public = torch.full((4,), NOT_PRIVATE)
    assert false_acceptance(logits, public) == 1.0  # the top-1 rule never rejects
    # every image is accepted by exactly one of the C identities: the mean over claims is 1/C
    assert impostor_acc1(logits, public) == pytest.approx(1 / 3)


def test_empty_sets_and_the_top1_rule():
    empty = torch.zeros(0, 3)
    assert false_acceptance(empty, torch.zeros(0, dtype=torch.long)) is None
    assert impostor_acc1(empty, torch.zeros(0, dtype=torch.long)) is None
    tied = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [0.5, 0.1, 0.9]])
    for c in range(3):  # top1 decides like attack_acc@1's topk_hits(k=1), ties included
        assert torch.equal(top1(tied) == c, topk_hits(tied, torch.full((3,), c), 1))


# --- the audit of a model, on a small balanced split -----------------------------------------------

@pytest.fixture(scope="module")
def small_splits():
    """4 private identities x 4 images (1 test image each) + 3 public ones; pixel (0, 0, 0) = identity."""
    ids = torch.arange(7).repeat_interleave(4)
    images = torch.randint(0, 255, (len(ids), 3, 8, 8), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    images[:, 0, 0, 0] = ids.to(torch.uint8)
    coll = TensorFaces(images, ids, [f"id{i}" for i in range(7)])
    return make_splits(coll, SplitSpec(private_identities=C, selection="first", test_fraction=0.25, seed=0))


class Oracle(nn.Module):
    """One-hot logits of each image's true private label (looked up from its pixel (0, 0, 0))."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("label_of", torch.tensor([0, 1, 2, 3, 0, 0, 0]))  # public ones: anything

    def forward(self, x):
        ident = (x[:, 0, 0, 0] * 255).round().long()
        return nn.functional.one_hot(self.label_of[ident], C).float()


class Constant(nn.Module):
    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.k = k

    def forward(self, x):
        return nn.functional.one_hot(torch.full((x.shape[0],), self.k), C).float()


def test_oracle_evaluator_accepts_no_private_impostor(small_splits):
    out = audit_model(Oracle(), small_splits, CPU, batch_size=3)
    assert out["private_other"] == {"images": 4, "false_acceptance": 0.0, "impostor_acc@1": 0.0,
                                    "impostor_acc@1_max": 0.0, "impostor_acc@1_max_identity": 0}
    assert out["public"]["images"] == 12
    assert out["public"]["false_acceptance"] == 1.0
    assert out["public"]["impostor_acc@1"] == pytest.approx(1 / C)


def test_constant_evaluator_accepts_all_impostors_of_its_class(small_splits):
    out = audit_model(Constant(), small_splits, CPU, batch_size=2)
    assert out["private_other"]["false_acceptance"] == pytest.approx(1 - 1 / C)
    assert out["private_other"]["impostor_acc@1"] == pytest.approx(1 / C)
    assert out["public"]["impostor_acc@1"] == pytest.approx(1 / C)
    assert audit_model(Constant(), small_splits, CPU, batch_size=2, max_images=5)["public"]["images"] == 5


class Exploding(nn.Module):
    def forward(self, x):
        raise AssertionError("the stored audit must be read, not recomputed")


def _ctx(tmp_path, model, splits, audit_on=True, second=None):
    suite = SimpleNamespace(evaluation=SimpleNamespace(audit=audit_on, second=second,
                                                       architecture=SimpleNamespace(name="oracle")),
                            run=SimpleNamespace(eval_batch_size=4))
    return SimpleNamespace(suite=suite, held=Held(splits=splits, evaluator=(model, {"test_accuracy": 0.9})),
                           store=Store(tmp_path / "store"), device=CPU,
                           plan=SimpleNamespace(evaluator_key="ev1", second_evaluator_key=None))


def test_audit_is_stored_once_and_read_back(tmp_path, small_splits):
    first = audit(_ctx(tmp_path, Oracle(), small_splits))
    assert first["private_other"]["false_acceptance"] == 0.0
    ctx = _ctx(tmp_path, Exploding(), small_splits)  # a new process: read from the store
    assert (tmp_path / "store" / "audits" / audit_key(ctx) / "audit.json").is_file()
    assert audit(ctx) == first
    summary = evaluator_summary(ctx)
    assert summary == {"test_accuracy": 0.9, "architecture": "oracle",
                       "audit": {"private_other": {"images": 4, "false_acceptance": 0.0, "impostor_acc@1": 0.0,
                                                   "impostor_acc@1_max": 0.0, "impostor_acc@1_max_identity": 0},
                                 "public": first["public"]}}
    off = _ctx(tmp_path, Exploding(), small_splits, audit_on=False)
    assert audit(off) is None and "audit" not in evaluator_summary(off)
    other = _ctx(tmp_path, Oracle(), small_splits)
    other.plan.evaluator_key = "ev2"
    assert audit_key(other) != audit_key(ctx)


# --- the MLflow numbers of a record's evaluator block ---------------------------------------------

def test_evaluator_metrics_for_mlflow():
    record = {"evaluator": {"test_accuracy": 0.8, "architecture": "x",
                            "audit": {"private_other": {"images": 4, "false_acceptance": 0.25, "impostor_acc@1": 0.1},
                                      "public": {"images": 9, "false_acceptance": 1.0, "impostor_acc@1": None}},
                            "second": {"architecture": "y", "test_accuracy": 0.7}}}
    assert evaluator_metrics(record) == {
        "evaluator_test_accuracy": 0.8, "evaluator_far_private": 0.25, "evaluator_impostor_acc1_private": 0.1,
        "evaluator_far_public": 1.0, "second_evaluator_test_accuracy": 0.7}
    assert evaluator_metrics({"status": "failed"}) == {}


# --- the second evaluation model --------------------------------------------------------------------

def _rec_and_ctx(second):
    labels = torch.tensor([0, 0, 1, 2])
    images = torch.zeros(4, 3, 8, 8)
    images[:, 0, 0, 0] = labels.float() / 255  # the oracle reads the identity here
    rec = Reconstruction(images, labels, info={"identities": 3})
    ctx = MetricContext(evaluation_model=Oracle(), target=Oracle(), target_report={}, private_train=None,
                        features=None, device=CPU, batch_size=2, second_evaluation_model=second)
    return rec, ctx


def test_evaluator_agreement():
    metric = EvaluatorAgreement(EvaluatorAgreement.Params())
    rec, ctx = _rec_and_ctx(Constant(0))  # the second one accepts only the images of identity 0
    out = metric.compute(rec, ctx)
    assert out.values == {"evaluator_agreement": pytest.approx(0.5), "second_acc@1": pytest.approx(0.5)}
    assert out.details["first_only"] == 2
    rec, ctx = _rec_and_ctx(None)
    with pytest.raises(MetricUnavailableError, match="evaluation.second"):
        metric.compute(rec, ctx)


SECOND = {"architecture": {"name": "small-cnn", "params": {"width": 4}}, "training": {"epochs": 1}}


def _loaded(**evaluation):
    load_plugins()
    data = tiny_suite()
    data["evaluation"] = {**data["evaluation"], **evaluation}
    return validate_suite(data, "t.yaml")


def test_second_evaluator_enters_keys_only_when_set():
    base, off = make_plan(_loaded()), make_plan(_loaded(audit=False))
    with_second = make_plan(_loaded(second=SECOND))
    assert base.second_evaluator_key is None and with_second.second_evaluator_key is not None
    assert [p.config_hash for p in off.pairs] == [p.config_hash for p in base.pairs]
    loaded = _loaded()
    metric_specs = [{"plugin": m.name, "version": REGISTRIES["metrics"].info(m.name).version,
                     "params": p.model_dump(mode="json")}
                    for m, p in zip(loaded.suite.metrics, loaded.metric_params, strict=True)]
    for p in base.pairs:  # the formula of suites without a second evaluator is unchanged
        assert p.config_hash == content_key({"attack": p.attack_key, "evaluator": base.evaluator_key,
                                             "metrics": metric_specs})
    for p, q in zip(base.pairs, with_second.pairs, strict=True):
        assert (p.target_key, p.attack_key) == (q.target_key, q.attack_key) and p.config_hash != q.config_hash
    assert with_second.evaluator_key == base.evaluator_key != with_second.second_evaluator_key
    needs = [False]
    assert [j.id for j in job_graph(base, base.pairs, needs)][0:2] == ["evaluator", "target:0:0"]
    graph = {j.id: j for j in job_graph(with_second, with_second.pairs, needs)}
    assert "second_evaluator" in graph["pair:hard__mif__seed0.json"].deps


@pytest.mark.parametrize("second,message", [
    ({"architecture": {"name": "small-cnn", "params": {"widht": 4}}}, "evaluation.second.architecture.params.widht"),
    ({"architecture": {"name": "no-such-net"}}, "evaluation.second.architecture.name"),
    ({"architecture": {"name": "small-cnn", "params": {"width": 8}}}, "must differ from target.architecture"),
])
def test_bad_second_evaluator_is_a_validation_error(write_suite, capsys, second, message):
    data = tiny_suite()
    data["evaluation"] = {**data["evaluation"], "second": second}
    assert main(["validate", "--schema-only", str(write_suite(data))]) == 2
    assert message in capsys.readouterr().err


def test_second_evaluator_identical_to_the_first_is_refused():
    data = tiny_suite()
    data["evaluation"] = {**data["evaluation"], "second": dict(data["evaluation"])}
    with pytest.raises(ConfigError, match="evaluation: second: the same model as the evaluation model"):
        validate_suite(data, "t.yaml")


def test_the_identity_strangers_land_on_most_is_reported_with_its_rate():
    from inversion_bench.products.audit import NOT_PRIVATE, impostor_acc1_max_of, set_scores

    # 4 public images over C = 3 identities: 3 land on identity 1, 1 on identity 2
    pred = torch.tensor([1, 1, 2, 1])
    labels = torch.full((4,), NOT_PRIVATE)
    assert impostor_acc1_max_of(pred, labels, 3) == (0.75, 1)
    s = set_scores(pred, labels, 3)
    assert s["impostor_acc@1"] == pytest.approx(1 / 3)  # fixed by the top-1 rule
    assert s["impostor_acc@1_max"] == 0.75 and s["impostor_acc@1_max_identity"] == 1
