"""Pruning: 2:4 sparsity and channel pruning, checked through ONNX Runtime on small graphs."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from optimizer.errors import ConfigError
from optimizer.model import load_model
from optimizer.pruning import prune, weights_2_4
from optimizer.pruning.reconstruct import obs_prune, output_error
from optimizer.pruning.sparsity import from_matrix, mask_2_4, to_matrix
from optimizer.runners import OrtRunner

RNG = np.random.default_rng(0)


def _save(tmp_path, nodes, inits, inputs, outputs, name="m.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _tensor(name, shape):
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def _correlated(n, channels=16, size=12, seed=1):
    """Images whose channels are correlated mixtures, as real feature maps are (so LS has something to use)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((channels, 4))
    base = rng.standard_normal((n, 4, size, size))
    x = np.einsum("ck,nkhw->nchw", mix, base) + 0.1 * rng.standard_normal((n, channels, size, size))
    return [{"x": x[i : i + 1].astype(np.float32)} for i in range(n)]


# Random-weight models lose accuracy to pruning by design; the tests that measure that error
# themselves pass force=True (the self-check in ``prune`` would otherwise refuse to write them).


def _conv_mlp(tmp_path):
    """Conv(16→32, 3×3) → Relu → GlobalAveragePool → Flatten → Gemm(transB) → MatMul."""
    inits = {
        "w1": (RNG.standard_normal((32, 16, 3, 3)) * 0.2).astype(np.float32),
        "b1": RNG.standard_normal(32).astype(np.float32),
        "w2": RNG.standard_normal((24, 32)).astype(np.float32),
        "b2": RNG.standard_normal(24).astype(np.float32),
        "w3": RNG.standard_normal((24, 8)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["g"], name="gemm", transB=1),
        helper.make_node("MatMul", ["g", "w3"], ["y"], name="matmul"),
    ]
    return _save(tmp_path, nodes, inits, [_tensor("x", [1, 16, 12, 12])], [_tensor("y", [1, 8])])


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ 2:4


def test_reduction_matrix_groups_run_along_input_channels():
    w = np.arange(2 * 8 * 3 * 3, dtype=np.float32).reshape(2, 8, 3, 3)
    m = to_matrix("Conv", w)
    # Four consecutive columns = four consecutive input channels at the same (o, kh, kw).
    np.testing.assert_array_equal(m[1, 4:8], w[1, 4:8, 0, 0])
    np.testing.assert_array_equal(from_matrix("Conv", m, w.shape), w)
    b = np.arange(12, dtype=np.float32).reshape(4, 3)  # MatMul B[K, N]
    np.testing.assert_array_equal(to_matrix("MatMul", b)[0], b[:, 0])
    np.testing.assert_array_equal(to_matrix("Gemm", b.T, trans_b=True), b.T)
    keep = mask_2_4(np.array([[1.0, -5.0, 3.0, 2.0, 0.0, 0.0, 9.0, 8.0]]) ** 2)
    assert keep.tolist() == [[False, True, True, False, False, False, True, True]]


def _check_2_4(weight, op, trans_b=False):
    """Independent check in TensorRT's terms (not through to_matrix)."""
    if op == "Conv":
        groups = weight.transpose(0, 2, 3, 1).reshape(-1, 4)  # runs of 4 along I per (o, kh, kw)
    elif op == "Gemm" and trans_b:
        groups = weight.reshape(-1, 4)  # B[N, K]: along K
    else:
        groups = weight.T.reshape(-1, 4)  # B[K, N]: along K
    assert ((groups != 0).sum(1) <= 2).all()
    assert (groups != 0).sum() == groups.size // 2  # and exactly half survives (no dead weights here)


@pytest.mark.parametrize("method", ["magnitude", "activation", "obs"])
def test_2_4_pattern_holds_for_every_pruned_weight(tmp_path, method):
    path = _conv_mlp(tmp_path)
    out = tmp_path / "sparse.onnx"
    before = _sha(path)
    data = _correlated(6)
    result = prune(path, out, sparsity="2:4", source=data if method != "magnitude" else None, method=method, min_weights=0, force=True)
    assert _sha(path) == before  # the input is only read
    pruned = {c.name for c in result.layers if c.action == "pruned"}
    assert pruned == {"conv1", "gemm", "matmul"}
    model = load_model(out)
    ops = {n.name: n for n in model.graph}
    for name, op, trans in (("conv1", "Conv", False), ("gemm", "Gemm", True), ("matmul", "MatMul", False)):
        _check_2_4(ops[name].inputs[1].const_value.numpy(), op, trans)
    assert all(weights_2_4(model).values())
    assert not any(weights_2_4(load_model(path)).values())
    y = OrtRunner(out).run(data[0])["y"]
    assert y.shape == (1, 8) and np.isfinite(y).all()


def test_layers_excluded_by_rule_and_name(tmp_path):
    path = _conv_mlp(tmp_path)
    result = prune(path, tmp_path / "o.onnx", sparsity="2:4", exclude=["gemm"], min_weights=1000)
    reasons = {c.name: (c.action, c.reason) for c in result.layers}
    assert reasons["gemm"] == ("skipped", "excluded by name")
    assert reasons["matmul"][0] == "skipped" and "too small" in reasons["matmul"][1]
    assert reasons["conv1"][0] == "pruned"


def test_obs_reconstruction_lowers_output_error_on_held_out_data(tmp_path):
    """Same 2:4 mask, with and without least-squares repair, judged by ORT on data it never saw."""
    inits = {"w": (RNG.standard_normal((32, 16, 3, 3)) * 0.2).astype(np.float32), "b": np.zeros(32, np.float32)}
    path = _save(tmp_path, [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])],
                 inits, [_tensor("x", [1, 16, 12, 12])], [_tensor("y", [1, 32, 12, 12])])
    calib, held_out = _correlated(8, seed=1), _correlated(8, seed=2)
    plain, fixed = tmp_path / "plain.onnx", tmp_path / "fixed.onnx"
    prune(path, plain, sparsity="2:4", source=calib, method="magnitude", reconstruct=False, min_weights=0, force=True)
    r = prune(path, fixed, sparsity="2:4", source=calib, method="magnitude", reconstruct=True, min_weights=0, force=True)
    ref = OrtRunner(path)
    err = {}
    for name, candidate in (("plain", plain), ("fixed", fixed)):
        run = OrtRunner(candidate)
        err[name] = np.mean([np.mean((ref.run(f)["y"] - run.run(f)["y"]) ** 2) for f in held_out])
    assert err["fixed"] < 0.5 * err["plain"], err
    choice = r.layers[0]
    assert choice.output_mse_reconstructed < choice.output_mse  # the estimate from H agrees with ORT


def test_obs_prune_matches_its_own_error_estimate():
    """obs_prune's returned weights reach a lower H-weighted error than masking alone."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 4)) @ rng.standard_normal((4, 16)) + 0.05 * rng.standard_normal((500, 16))
    h = x.T @ x / len(x)
    w = rng.standard_normal((8, 16))
    mask = mask_2_4(np.abs(w))
    fixed, keep = obs_prune(w, h, mask=mask)
    assert (keep == mask).all() and (fixed[~mask] == 0).all()
    assert output_error(fixed, w, h) < 0.5 * output_error(w * mask, w, h)


# ------------------------------------------------------------------ channels


def _residual(tmp_path, dead=(), join="Add"):
    """conv1(4→8) → relu → conv2(8→8) → add(relu, conv2) → conv3(8→4) → y. conv1, conv2 tied by the Add."""
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((8, 8, 1, 1)).astype(np.float32)
    b2 = rng.standard_normal(8).astype(np.float32)
    w3 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    for c in dead:  # channel c carries exactly zero through the whole residual group
        w1[c], b1[c], w2[c], b2[c] = 0, 0, 0, 0
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node(join, ["r1", "c2"], ["s"], name="residual"),
        helper.make_node("Conv", ["s", "w3"], ["y"], name="conv3"),
    ]
    return _save(tmp_path, nodes, inits, [_tensor("x", [1, 4, 10, 10])], [_tensor("y", [1, 4, 10, 10])]), inits


@pytest.mark.parametrize("join", ["Add", "Sum"])  # Sum: the variadic residual of Caffe2-era exports
def test_residual_group_pruned_as_one_matches_hand_computed_case(tmp_path, join):
    dead = (1, 3, 4, 6)
    path, w = _residual(tmp_path, dead, join)
    out = tmp_path / "pruned.onnx"
    data = [{"x": np.random.default_rng(i).standard_normal((1, 4, 10, 10)).astype(np.float32)} for i in range(4)]
    result = prune(path, out, channels=0.5, source=data, criterion="l2", reconstruct=False)
    [group] = [g for g in result.groups if g.kept != g.channels]
    assert sorted(group.roots) == ["conv1", "conv2"] and sorted(group.consumers) == ["conv2", "conv3"]
    keep = [0, 2, 5, 7]  # the live channels, by hand
    ops = {n.name: n for n in load_model(out).graph}
    arr = lambda n, i: ops[n].inputs[i].const_value.numpy()  # noqa: E731
    np.testing.assert_array_equal(arr("conv1", 1), w["w1"][keep])
    np.testing.assert_array_equal(arr("conv1", 2), w["b1"][keep])
    np.testing.assert_array_equal(arr("conv2", 1), w["w2"][keep][:, keep])  # same indices on both sides of the Add
    np.testing.assert_array_equal(arr("conv3", 1), w["w3"][:, keep])
    ref, cand = OrtRunner(path), OrtRunner(out)
    for feed in data:
        np.testing.assert_allclose(cand.run(feed)["y"], ref.run(feed)["y"], rtol=1e-5, atol=1e-5)
    assert result.params_after < result.params_before and result.flops_after < result.flops_before


def test_shape_contracts_pin_groups_and_are_reported(tmp_path):
    """A Conv feeding a graph output, and one feeding a Concat, are left alone with a reason."""
    rng = np.random.default_rng(0)
    inits = {
        "wa": rng.standard_normal((8, 4, 1, 1)).astype(np.float32),
        "wb": rng.standard_normal((8, 4, 1, 1)).astype(np.float32),
        "wc": rng.standard_normal((8, 16, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conva"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="convb"),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["y"], name="convc"),
    ]
    path = _save(tmp_path, nodes, inits, [_tensor("x", [1, 4, 6, 6])], [_tensor("y", [1, 8, 6, 6])])
    result = prune(path, tmp_path / "o.onnx", channels=0.5, input_shapes=None)
    assert result.flops_after == result.flops_before
    reasons = " | ".join(g.reason for g in result.groups)
    assert "Concat" in reasons and "graph output 'y'" in reasons
    assert any("no channel group" in w for w in result.warnings)


def test_channel_reconstruction_lowers_error_on_held_out_data(tmp_path):
    path, _ = _residual(tmp_path)
    calib = [{"x": f["x"][:, :4, :10, :10]} for f in _correlated(8, seed=1)]
    held = [{"x": f["x"][:, :4, :10, :10]} for f in _correlated(8, seed=2)]
    plain, fixed = tmp_path / "plain.onnx", tmp_path / "fixed.onnx"
    prune(path, plain, channels=0.5, source=calib, criterion="l2", reconstruct=False, force=True)
    prune(path, fixed, channels=0.5, source=calib, criterion="l2", reconstruct=True, force=True)
    ref = OrtRunner(path)
    err = {}
    for name, candidate in (("plain", plain), ("fixed", fixed)):
        run = OrtRunner(candidate)
        err[name] = np.mean([np.mean((ref.run(f)["y"] - run.run(f)["y"]) ** 2) for f in held])
    assert err["fixed"] < err["plain"], err


def test_dry_run_writes_nothing_and_reports(tmp_path):
    path, _ = _residual(tmp_path)
    out = tmp_path / "never.onnx"
    result = prune(path, out, channels=0.5, dry_run=True)
    assert not out.exists() and result.dry_run
    assert result.flops_after < result.flops_before and result.groups


def test_flops_target_reaches_the_reduction(tmp_path):
    path, _ = _residual(tmp_path)
    result = prune(path, tmp_path / "o.onnx", flops_target=0.4)
    assert result.flops_reduction >= 0.4


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"sparsity": "1:4"}, "not supported"),
        ({}, "nothing to do"),
        ({"channels": 1.5}, "between 0 and 1"),
        ({"channels": 0.3, "flops_target": 0.3}, "not both"),
        ({"sparsity": "2:4", "method": "obs"}, "needs calibration data"),
        ({"sparsity": "2:4", "method": "bogus"}, "unknown"),
    ],
)
def test_bad_arguments_raise_config_error(tmp_path, kwargs, fragment):
    path, _ = _residual(tmp_path)
    with pytest.raises(ConfigError, match=fragment):
        prune(path, tmp_path / "o.onnx", **kwargs)


def test_refuses_to_overwrite_input(tmp_path):
    path, _ = _residual(tmp_path)
    with pytest.raises(ConfigError, match="overwrite"):
        prune(path, path, channels=0.5)


def test_sequential_refit_keeps_2_4_and_beats_plain_masking(tmp_path):
    """``waves``: layers refit in graph order on the pruned model's own inputs, towards the original outputs."""
    path = _conv_mlp(tmp_path)
    calib, held = _correlated(8, seed=1), _correlated(8, seed=2)
    plain, seq = tmp_path / "plain.onnx", tmp_path / "seq.onnx"
    prune(path, plain, sparsity="2:4", source=calib, method="magnitude", reconstruct=False, min_weights=0, force=True)
    result = prune(path, seq, sparsity="2:4", source=calib, method="magnitude", reconstruct=True, waves=2, min_weights=0, force=True)
    ops = {n.name: n for n in load_model(seq).graph}
    for name, op, trans in (("conv1", "Conv", False), ("gemm", "Gemm", True), ("matmul", "MatMul", False)):
        _check_2_4(ops[name].inputs[1].const_value.numpy(), op, trans)
    assert {c.name for c in result.layers if c.action == "pruned"} == {"conv1", "gemm", "matmul"}
    ref = OrtRunner(path)
    err = {}
    for name, candidate in (("plain", plain), ("seq", seq)):
        run = OrtRunner(candidate)
        err[name] = np.mean([np.mean((ref.run(f)["y"] - run.run(f)["y"]) ** 2) for f in held])
    assert err["seq"] < err["plain"], err


def test_accuracy_budget_picks_the_largest_cut_within_the_measured_error(tmp_path):
    from optimizer.pruning import prune_within_error
    from optimizer.pruning.budget import relative_error

    path, _ = _residual(tmp_path)
    calib = [{"x": np.random.default_rng(i).standard_normal((1, 4, 10, 10)).astype(np.float32)} for i in range(4)]
    val = [{"x": np.random.default_rng(100 + i).standard_normal((1, 4, 10, 10)).astype(np.float32)} for i in range(4)]
    out = tmp_path / "budget.onnx"
    loose = prune_within_error(path, out, val=val, max_error=10.0, candidates=(0.2, 0.4), source=calib)
    assert [t["flops_target"] for t in loose.budget["trials"]] == [0.2, 0.4] and loose.flops_reduction >= 0.4
    errors = [t["relative_error"] for t in loose.budget["trials"]]
    assert relative_error(path, out, val) == pytest.approx(errors[-1], rel=1e-5)  # the written model is the one measured
    budget = (errors[0] + errors[1]) / 2
    if errors[0] < budget < errors[1]:
        tight = prune_within_error(path, out, val=val, max_error=budget, candidates=(0.2, 0.4), source=calib)
        assert tight.budget["trials"][-1]["relative_error"] > budget and 0.2 <= tight.flops_reduction < 0.4
    with pytest.raises(ConfigError, match="over the budget"):
        prune_within_error(path, out, val=val, max_error=1e-12, candidates=(0.2,), source=calib)
    with pytest.raises(ConfigError, match="validation data"):
        prune_within_error(path, out, val=None, max_error=0.1)


def test_prune_model_cuts_as_told_or_searches_within_the_error(tmp_path):
    from optimizer.pruning import prune_model

    path, _ = _residual(tmp_path)
    calib = [{"x": np.random.default_rng(i).standard_normal((1, 4, 10, 10)).astype(np.float32)} for i in range(4)]
    val = [{"x": np.random.default_rng(100 + i).standard_normal((1, 4, 10, 10)).astype(np.float32)} for i in range(4)]
    cut = prune_model(path, tmp_path / "cut.onnx", channels=0.5, source=calib, criterion="l2", tolerance=10.0)
    assert cut.budget is None and cut.channels == 0.5 and cut.check["tolerance"] == 10.0 and cut.check["passed"]
    assert cut.output == str(tmp_path / "cut.onnx") and (tmp_path / "cut.onnx").exists()
    dry = prune_model(path, None, channels=0.5, source=calib, criterion="l2", dry_run=True)
    assert dry.output is None and dry.flops_after == cut.flops_after < cut.flops_before  # the same cut, not written
    searched = prune_model(path, tmp_path / "s.onnx", max_error=10.0, val=val, source=calib, candidates=(0.2,))
    assert searched.budget["max_error"] == 10.0 and [t["flops_target"] for t in searched.budget["trials"]] == [0.2]
    assert searched.check is None and searched.output == str(tmp_path / "s.onnx") and (tmp_path / "s.onnx").exists()
    with pytest.raises(ConfigError, match="validation data"):
        prune_model(path, tmp_path / "n.onnx", max_error=0.1, source=calib)


def test_im2col_rows_reproduce_the_conv_output_in_ort(tmp_path):
    """The sampled patches (kh, kw, I order) times the reduction matrix = ORT's Conv, with stride, dilation, asymmetric pads."""
    from optimizer.pruning.activations import im2col_rows
    from optimizer.pruning.layers import find_layers

    rng = np.random.default_rng(7)
    inits = {"w": rng.standard_normal((6, 8, 3, 2)).astype(np.float32)}
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1])
    path = _save(tmp_path, [node], inits, [_tensor("x", [2, 8, 9, 7])], [_tensor("y", [2, 6, 5, 6])])
    x = rng.standard_normal((2, 8, 9, 7)).astype(np.float32)
    y = OrtRunner(path).run({"x": x})["y"]
    [layer] = find_layers(load_model(path))
    flat = np.arange(y.shape[0] * y.shape[2] * y.shape[3])
    rows = im2col_rows(x.astype(np.float64), layer, rng, positions=len(flat), flat=flat)
    got = rows @ to_matrix("Conv", inits["w"]).T  # [N*Ho*Wo, O]
    want = y.transpose(0, 2, 3, 1).reshape(-1, 6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bn_depthwise_and_per_channel_constants_are_sliced_and_bias_absorbs_constant_channels(tmp_path):
    """conv1 → BN → depthwise → Mul[1,C,1,1] → Relu → conv2. Dead conv1 channels leave a *constant*
    (BN shift, depthwise bias) that conv2 reads: the LS refit must fold it into conv2's bias exactly."""
    rng = np.random.default_rng(11)
    dead = [1, 2, 5, 6]
    w1 = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w1[dead], b1[dead] = 0, 0
    inits = {
        "w1": w1, "b1": b1,
        "scale": rng.uniform(0.5, 1.5, 8).astype(np.float32), "shift": rng.standard_normal(8).astype(np.float32),
        "mean": rng.standard_normal(8).astype(np.float32), "var": rng.uniform(0.5, 2, 8).astype(np.float32),
        "wd": rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "bd": rng.standard_normal(8).astype(np.float32),
        "gain": rng.uniform(0.5, 2, (1, 8, 1, 1)).astype(np.float32),
        "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "scale", "shift", "mean", "var"], ["bn"], name="bn"),
        # No padding here: a zero-padded border would make a dead channel vary at the edges.
        helper.make_node("Conv", ["bn", "wd", "bd"], ["dw"], name="dw", group=8),
        helper.make_node("Mul", ["dw", "gain"], ["m"], name="gain_mul"),
        helper.make_node("Relu", ["m"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2"),
    ]
    path = _save(tmp_path, nodes, inits, [_tensor("x", [1, 4, 8, 8])], [_tensor("y", [1, 4, 6, 6])])
    data = [{"x": np.random.default_rng(i).standard_normal((1, 4, 8, 8)).astype(np.float32)} for i in range(6)]
    out = tmp_path / "pruned.onnx"
    result = prune(path, out, channels=0.5, source=data, criterion="l2", reconstruct=True, damp=1e-9)
    [group] = [g for g in result.groups if g.kept < g.channels]
    assert group.roots == ["conv1"] and group.consumers == ["conv2"] and group.kept == 4
    ops = {n.name: n for n in load_model(out).graph}
    keep = [0, 3, 4, 7]
    np.testing.assert_array_equal(ops["bn"].inputs[1].const_value.numpy(), inits["scale"][keep])
    np.testing.assert_array_equal(ops["dw"].inputs[1].const_value.numpy(), inits["wd"][keep])
    assert ops["dw"].attributes["group"].as_int() == 4
    np.testing.assert_array_equal(ops["gain_mul"].inputs[1].const_value.numpy(), inits["gain"][:, keep])
    assert ops["conv2"].inputs[1].const_value.shape == (4, 4, 1, 1) and len(ops["conv2"].inputs) == 3  # a bias was added
    ref, cand = OrtRunner(path), OrtRunner(out)
    for feed in [{"x": np.random.default_rng(50 + i).standard_normal((1, 4, 8, 8)).astype(np.float32)} for i in range(3)]:
        np.testing.assert_allclose(cand.run(feed)["y"], ref.run(feed)["y"], rtol=1e-3, atol=1e-3)


def test_output_check_of_an_empty_output_is_silent_and_exact(tmp_path):
    """A model whose output has a zero-sized dim: no error to measure, and no numpy warning about it (fuzz seed 3)."""
    import warnings

    from onnx import TensorProto, helper

    from optimizer.pruning.check import measure_outputs

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [0, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [0, 4])],
    )
    path = tmp_path / "empty.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Mean of empty slice" would raise here
        check = measure_outputs(path, path, [{"x": np.zeros((0, 4), np.float32)}])
    assert check["relative_error"] == 0.0 and check["samples"] == 1 and check["nonfinite"] == 0


@pytest.mark.parametrize("axes", [[2, 3], [-1, -2]])
def test_global_pooling_written_as_reduce_mean_passes_channels(tmp_path, axes):
    """torch's dynamo exporter writes global average pooling as ReduceMean(axes, keepdims=1):
    the channels still pass through, so the Conv before it stays prunable (it was 'read by ReduceMean')."""
    inits = {
        "w1": (RNG.standard_normal((32, 16, 3, 3)) * 0.2).astype(np.float32),
        "w2": (RNG.standard_normal((8, 32, 1, 1)) * 0.2).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("ReduceMean", ["r1"], ["p"], name="gap", axes=axes, keepdims=1),
        helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2"),
    ]
    path = _save(tmp_path, nodes, inits, [_tensor("x", [1, 16, 12, 12])], [_tensor("y", [1, 8, 1, 1])])
    out = tmp_path / "p.onnx"
    result = prune(path, out, channels=0.25, force=True)
    (group,) = [g for g in result.groups if "conv1" in g.roots]
    assert group.reason == "" and group.kept == 24, group.reason
    y = OrtRunner(out).run({"x": np.ones((1, 16, 12, 12), np.float32)})["y"]
    assert y.shape == (1, 8, 1, 1)
