"""hoist_if_branch_common: work both If branches compute from outer values moves before the If."""

import numpy as np
import onnx_ir as ir
from gp_helpers import apply, assert_equivalent, op_counts, parse

from graph_passes import run_passes
from graph_passes.hoist_if_branch_common import HoistIfBranchCommon

BRANCHES = """
<ir_version: 8, opset_import: ["" : 17]>
g (bool c, float[N,3] x, float[N,3] w) => (float[N,3] y) {
  y = If(c) <
    then_branch = t () => (float[N,3] t_out) {
      tr = Transpose<perm=[1,0]>(x)
      a = Relu(tr)
      m = MatMul(w, a)
      local = Neg(m)
      t_out = Sigmoid(local)
    },
    else_branch = e () => (float[N,3] e_out) {
      tr2 = Transpose<perm=[1,0]>(x)
      b = Relu(tr2)
      m2 = MatMul(w, b)
      other = Abs(m2)
      e_out = Sigmoid(other)
    }
  >
}
"""


def _feeds(cond: bool, n: int = 3):
    rng = np.random.default_rng(int(cond))
    return {"c": np.array(cond), "x": rng.standard_normal((n, 3)).astype(np.float32),
            "w": rng.standard_normal((n, 3)).astype(np.float32)}


def _branch_ops(model: ir.Model) -> list:
    (if_node,) = [n for n in model.graph if n.op_type == "If"]
    return [sorted(n.op_type for n in if_node.attributes[b].as_graph()) for b in ("then_branch", "else_branch")]


def test_common_chain_moves_out_once_and_branch_work_stays():
    model = parse(BRANCHES)
    pass_ = HoistIfBranchCommon()
    out, modified = apply(pass_, model)
    assert modified and "hoisted 3 nodes" in pass_.notes[0]
    outer = [n.op_type for n in out.graph]
    assert outer == ["Transpose", "Relu", "MatMul", "If"]
    # Neg/Abs differ; the Sigmoids read different values and are branch outputs: they stay.
    assert _branch_ops(out) == [["Neg", "Sigmoid"], ["Abs", "Sigmoid"]]
    assert_equivalent(model, out, feeds=[_feeds(True), _feeds(False)])


def test_different_attributes_or_local_inputs_are_not_twins():
    model = parse(BRANCHES.replace("tr2 = Transpose<perm=[1,0]>(x)", "tr2 = Transpose<perm=[0,1]>(x)")
                 .replace("float[N,3] x", "float[3,3] x").replace("float[N,3]", "float[3,3]"))
    out, modified = apply(HoistIfBranchCommon(), model)
    # Only the Transposes had outer inputs, and they differ in perm: nothing can move.
    assert not modified and op_counts(out) == op_counts(model)


def test_runs_in_the_default_order_and_keeps_outputs():
    model = parse(BRANCHES)
    original = model.clone()
    records = run_passes(model)
    record = next(r for r in records if r.name == "hoist_if_branch_common")
    assert record.modified and record.nodes_after < record.nodes_before
    assert_equivalent(original, model, feeds=[_feeds(True, 4), _feeds(False, 4)])
