"""run_passes with a verifier: one check at the end; a bisection names the culprit only on failure."""

import numpy as np
import onnx_ir as ir
import pytest
from gp_helpers import assert_equivalent, op_counts, parse

from graph_passes import Verifier, run_passes
from graph_passes._base import GraphPass
from optimizer.errors import VerificationError

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4,3] x) => (float[4,3] y) {
  a = Add(x, x)
  b = Identity(a)
  c = Mul(b, b)
  d = Dropout(c)
  y = Relu(d)
}
"""


class Rename(GraphPass):
    """Harmless: renames the nth node (a change that keeps every output)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.name = f"rename_{index}"

    def call(self, model):
        node = list(model.graph)[self.index]
        node.name = f"renamed_{self.index}"
        return ir.passes.PassResult(model, True)


class MulToAdd(GraphPass):
    """Deliberately wrong: turns the Mul into an Add."""

    name = "mul_to_add"

    def call(self, model):
        for node in list(model.graph):
            if node.op_type == "Mul":
                node.op_type = "Add"
                return ir.passes.PassResult(model, True)
        return ir.passes.PassResult(model, False)


class CountingVerifier(Verifier):
    """A real Verifier that counts its checks (how many ONNX Runtime runs verification cost)."""

    def __init__(self, model):
        super().__init__(model)
        self.checks = 0

    def check(self, model, after_pass):
        self.checks += 1
        return super().check(model, after_pass)


def _plan(culprit_at: int | None, n: int = 8) -> list:
    passes = [Rename(i % 5) for i in range(n)]
    if culprit_at is not None:
        passes.insert(culprit_at, MulToAdd())
    return passes


def test_one_check_when_everything_is_fine():
    model = parse(CHAIN)
    verifier = CountingVerifier(model)
    records = run_passes(model, [*_plan(None), "remove_identity", "remove_dropout"], verifier=verifier)
    assert verifier.checks == 1
    assert any(n.startswith("verified:") for n in records[-1].notes + records[-2].notes)
    assert all(r.warning is None for r in records)


def test_no_check_when_nothing_changed():
    model = parse(CHAIN)
    verifier = CountingVerifier(model)
    run_passes(model, ["fold_batchnorm_into_conv"], verifier=verifier)
    assert verifier.checks == 0


@pytest.mark.parametrize("culprit_at", [0, 3, 8])
def test_bisection_names_the_culprit_in_log_n_checks(culprit_at):
    original = parse(CHAIN)
    model = original.clone()
    verifier = CountingVerifier(model)
    records = run_passes(model, _plan(culprit_at, n=8), verifier=verifier)
    (warned,) = [r for r in records if r.warning]
    assert warned.name == "mul_to_add" and "changed what the model computes" in warned.warning
    assert not warned.modified
    # 9 changing passes: 1 end check + ceil(log2(9)) = 4 bisection checks, then one more end
    # check after the passes behind the culprit ran again.
    assert verifier.checks <= 1 + 4 + 1
    assert [r.name for r in records].count("mul_to_add") == 1 and len(records) == 9
    assert op_counts(model)["Mul"] == 1
    assert_equivalent(original, model)


def test_strict_raises_naming_the_culprit_and_keeps_what_came_before():
    model = parse(CHAIN)
    verifier = CountingVerifier(model)
    with pytest.raises(VerificationError) as err:
        run_passes(model, ["remove_identity", MulToAdd(), "remove_dropout"], verifier=verifier, strict=True)
    assert "mul_to_add" in str(err.value) and err.value.exit_code == 1
    ops = op_counts(model)
    assert ops["Mul"] == 1 and "Identity" not in ops and ops["Dropout"] == 1


def test_two_culprits_are_both_rolled_back():
    original = parse(CHAIN)
    model = original.clone()
    verifier = CountingVerifier(model)

    class ReluToNeg(GraphPass):
        """Deliberately wrong: Relu becomes Neg."""

        name = "relu_to_neg"

        def call(self, model):
            for node in model.graph:
                if node.op_type == "Relu":
                    node.op_type = "Neg"
                    return ir.passes.PassResult(model, True)
            return ir.passes.PassResult(model, False)

    records = run_passes(model, [Rename(0), MulToAdd(), Rename(1), ReluToNeg(), "remove_dropout"], verifier=verifier)
    assert sorted(r.name for r in records if r.warning) == ["mul_to_add", "relu_to_neg"]
    assert op_counts(model) == {"Add": 1, "Identity": 1, "Mul": 1, "Relu": 1}
    rng = np.random.default_rng(0)
    assert_equivalent(original, model, feeds=[{"x": rng.standard_normal((4, 3)).astype(np.float32)}])
