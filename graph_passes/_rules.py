"""Apply onnxscript rewrite rules and say why the ones that matched a pattern refused."""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir


def apply_rules(model: ir.Model, rules, *, explain: bool = True) -> tuple[Counter, list[tuple[ir.Node, str]]]:
    """Apply ``rules`` (onnxscript ``RewriteRule`` objects) everywhere in ``model``.

    Returns how often each rule fired and (with ``explain``), for nodes that matched a
    rule's pattern but failed its check, ``(node, reason)`` pairs with the rule's own reason,
    for the caller's ``GraphPass.refuse``.
    """
    from onnxscript.rewriter import RewriteRuleSet

    fired: Counter = Counter()
    for rule in rules:
        # One rule set per rule so each application is counted against its rule.
        count = RewriteRuleSet([rule]).apply_to_model(model)
        if count:
            fired[_rule_name(rule)] += count
    return fired, (explain_refusals(model, rules) if explain else [])


def explain_refusals(model: ir.Model, rules) -> list[tuple[ir.Node, str]]:
    """Dry-run ``rules`` (nothing changes) and collect ``(node, reason)`` for failed checks."""
    from onnxscript.rewriter import MatchingTracer, MatchStatus, RewriteRuleSet

    refusals: list[tuple[ir.Node, str]] = []

    class _Collect(MatchingTracer):
        def log(self, rule, container, node, match_result, status) -> None:  # noqa: D401
            if status == MatchStatus.CONDITION_FAILED:
                refusals.append((node, str(match_result.reason or "check failed")))

    RewriteRuleSet(list(rules)).apply_to_model(model, tracer=_Collect())
    return refusals


def _rule_name(rule) -> str:
    return getattr(rule, "name", None) or str(rule)


class RuleStep(ir.passes.InPlacePass):
    """One sweep of a list of rules as an onnx-ir pass, so a PassManager can repeat it."""

    def __init__(self, rules) -> None:
        super().__init__()
        self.rules = list(rules)
        self.fired: Counter = Counter()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        fired, _ = apply_rules(model, self.rules, explain=False)
        self.fired.update(fired)
        return ir.passes.PassResult(model, modified=bool(fired))


class RulePass:
    """Mixin for a GraphPass that is a set of onnxscript rewrite rules applied once.

    Subclasses give ``rules(model)`` (an empty list means "not applicable here"; say why with
    ``self.note``) and set ``reads_shapes`` when a rule's check reads tensor shapes: then
    shapes are re-inferred from the graph inputs first and declared ones are not trusted.
    Refused matches are always looked for (one dry run, about as cheap as the rewrite), so
    every record counts them, with ``explain`` or without.
    """

    reads_shapes = False

    def rules(self, model: ir.Model) -> list:
        raise NotImplementedError

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from graph_passes._base import summarize_counts

        rules = self.rules(model)
        if not rules:
            return ir.passes.PassResult(model, modified=False)
        if self.reads_shapes:
            from graph_passes._base import infer_shapes, untrusted_shapes

            with untrusted_shapes(model):
                infer_shapes(model)
                fired, refusals = apply_rules(model, rules)
        else:
            fired, refusals = apply_rules(model, rules)
        for node, reason in refusals:
            self.refuse(node, reason)
        if fired:
            self.note(f"fused {sum(fired.values())} ({summarize_counts(fired)})")
        return ir.passes.PassResult(model, modified=bool(fired))
