"""Evaluator agreement: does a second evaluation model confirm the first one's verdicts?

Ho et al. (arXiv 2505.03519) show that one evaluation model's top-1 decision counts many false
positives (reconstructions accepted as the attacked identity without showing it). A reconstruction
that two evaluation models of different architectures both accept is far less likely to be such an
accident. With the suite's ``evaluation.second`` model this metric reports

- ``evaluator_agreement``: the share of reconstructions both evaluation models accept at top-1
  (top-1 class == attacked identity), and
- ``second_acc@1``: the second evaluation model's attack accuracy (top-1),

both counted like ``attack_acc@1`` (an attacked identity the attack returned no image for is a miss),
so ``evaluator_agreement <= min(attack_acc@1, second_acc@1)``.
"""

from __future__ import annotations

from inversion_bench.errors import MetricUnavailableError
from inversion_bench.interfaces import Metric, MetricContext, MetricResult, Reconstruction
from inversion_bench.metrics.accuracy import accuracy_over_attacked, evaluation_logits, model_logits, topk_hits
from inversion_bench.record_model import MetricOutput
from inversion_bench.registry import metrics


@metrics.register("evaluator_agreement")
class EvaluatorAgreement(Metric):
    """Share of reconstructions both evaluation models accept at top-1, and the second one's Acc@1."""

    outputs = {"evaluator_agreement": MetricOutput(better="lower", unit="share"),
               "second_acc@1": MetricOutput(better="lower", unit="share")}

    def compute(self, rec: Reconstruction, ctx: MetricContext) -> MetricResult:
        if ctx.second_evaluation_model is None:
            raise MetricUnavailableError("evaluator_agreement: the suite has no second evaluation model; add "
                                         "evaluation.second: {architecture: {name: ...}, training: {...}} to the "
                                         "suite, or remove the metric")
        if rec.images.shape[0] == 0:
            raise MetricUnavailableError("evaluator_agreement: the attack returned no images")
        first = topk_hits(evaluation_logits(ctx, rec.images), rec.labels, 1)
        second_logits = model_logits(ctx.second_evaluation_model, rec.images, ctx.device, ctx.batch_size)
        second = topk_hits(second_logits, rec.labels, 1)
        present = int(rec.labels.unique().numel())
        attacked = max(int(rec.info.get("identities", present)), present)
        both = first & second
        details = {
            "n": int(rec.images.shape[0]),
            "first_only": int((first & ~second).sum()),
            "second_only": int((second & ~first).sum()),
            "both": int(both.sum()),
            "confirmed_share": float(both.sum()) / max(int(first.sum()), 1),  # of the first one's acceptances
        }
        return MetricResult(values={"evaluator_agreement": accuracy_over_attacked(both, rec.labels, attacked),
                                    "second_acc@1": accuracy_over_attacked(second, rec.labels, attacked)},
                            details=details)
