"""The eager fast path (a group's lists kept in C++ between steps) gives the
same steps as torch.optim through everything that changes a group: grads
coming and going, new groups, loaded state, new options."""
import copy

import pytest
import torch

import fusedopt
from helpers import STATE_KEYS, assert_same_state, clone_params, gradients, make_params, tolerances

FP32 = tolerances(torch.float32)


def _twins(name, opts, shapes=((7,), (3, 5), (1,), (64,))):
    base = make_params(list(shapes), torch.float32)
    ours_params, torch_params = clone_params(base), clone_params(base)
    ours = getattr(fusedopt, name)(ours_params, **opts)
    theirs = getattr(torch.optim, name)(torch_params, **opts, foreach=False)
    return ours, ours_params, theirs, torch_params


def _step(pairs, step, which=None):
    for opt, params in pairs:
        for i, (p, g) in enumerate(zip(params, gradients(params, step))):
            p.grad = g if which is None or i in which else None
        opt.step()


def test_steps_after_the_first_use_a_plan():
    ours, ours_params, theirs, torch_params = _twins("Adam", dict(lr=0.01))
    _step([(ours, ours_params), (theirs, torch_params)], 0)
    assert len(ours._plans) == 1
    calls = []
    real = fusedopt._native.C.adam_step
    fusedopt._native.C.adam_step = lambda *a, **k: (calls.append(1), real(*a, **k))
    try:
        _step([(ours, ours_params), (theirs, torch_params)], 1)
    finally:
        fusedopt._native.C.adam_step = real
    assert calls == [1]
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS["Adam"], *FP32)


@pytest.mark.parametrize("name,opts", [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.01)),
                                       ("RMSprop", dict(lr=0.01, centered=True)), ("Adagrad", dict(lr=0.05))])
def test_grads_coming_and_going(name, opts):
    ours, ours_params, theirs, torch_params = _twins(name, opts)
    pairs = [(ours, ours_params), (theirs, torch_params)]
    _step(pairs, 0)
    _step(pairs, 1, which={0, 2})     # some params without grad: slow path, plan kept
    _step(pairs, 2)                   # all grads again: the plan
    _step(pairs, 3, which={1, 2, 3})  # param 0 skipped once more
    _step(pairs, 4)
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *FP32)


def test_param_group_added_and_state_loaded():
    ours, ours_params, theirs, torch_params = _twins("Adam", dict(lr=0.01))
    pairs = [(ours, ours_params), (theirs, torch_params)]
    _step(pairs, 0)
    _step(pairs, 1)
    extra = make_params([(9,)], torch.float32, seed=7)
    ours_extra, torch_extra = clone_params(extra), clone_params(extra)
    ours.add_param_group({"params": ours_extra, "lr": 0.02})
    theirs.add_param_group({"params": torch_extra, "lr": 0.02})
    pairs = [(ours, ours_params + ours_extra), (theirs, torch_params + torch_extra)]
    _step(pairs, 2)
    _step(pairs, 3)
    # Load a state (a copy: a live state_dict shares its tensors) with new
    # tensors: the plan must not keep the old ones.
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    _step(pairs, 4)
    _step(pairs, 5)
    assert_same_state(ours, ours_params + ours_extra, theirs, torch_params + torch_extra, STATE_KEYS["Adam"], *FP32)


@pytest.mark.parametrize("name,key,value", [("Adam", "amsgrad", True), ("SGD", "momentum", 0.9),
                                            ("RMSprop", "centered", True), ("RMSprop", "momentum", 0.5)])
def test_option_that_adds_state(name, key, value):
    ours, ours_params, theirs, torch_params = _twins(name, dict(lr=0.01))
    pairs = [(ours, ours_params), (theirs, torch_params)]
    _step(pairs, 0)
    _step(pairs, 1)
    # torch.optim creates the new state only with fresh state, so both start over.
    for opt in (ours, theirs):
        opt.state.clear()
        opt.param_groups[0][key] = value
    _step(pairs, 2)
    _step(pairs, 3)
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *FP32)
    assert ours.param_groups[0][key] == value


def test_changed_hyperparameters_are_read_every_step():
    ours, ours_params, theirs, torch_params = _twins("Adam", dict(lr=0.01))
    pairs = [(ours, ours_params), (theirs, torch_params)]
    _step(pairs, 0)
    for opt in (ours, theirs):
        opt.param_groups[0]["lr"] = 0.003
        opt.param_groups[0]["betas"] = (0.5, 0.9)
        opt.param_groups[0]["weight_decay"] = 0.2
    _step(pairs, 1)
    _step(pairs, 2)
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS["Adam"], *FP32)


def test_optimizer_with_a_plan_can_be_copied_and_pickled():
    """The C++ lists are a cache: copies and pickles leave them out and rebuild."""
    import io
    params = clone_params(make_params([(7,), (3, 5)], torch.float32))
    opt = fusedopt.Adam(params, lr=0.01)
    _step([(opt, params)], 0)
    _step([(opt, params)], 1)
    assert opt._plans
    twin = copy.deepcopy(opt)
    twin_params = [p for g in twin.param_groups for p in g["params"]]
    _step([(opt, params), (twin, twin_params)], 2)
    _step([(opt, params), (twin, twin_params)], 3)
    assert_same_state(opt, params, twin, twin_params, STATE_KEYS["Adam"], *FP32)
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=False).state_dict()["state"].keys() == opt.state_dict()["state"].keys()


@pytest.mark.parametrize("name,opts,key", [("Adam", dict(lr=0.01), "exp_avg"), ("SGD", dict(lr=0.05, momentum=0.9),
                                                                                  "momentum_buffer"),
                                           ("RMSprop", dict(lr=0.01, centered=True), "grad_avg"),
                                           ("Adagrad", dict(lr=0.05), "sum"), ("Adam", dict(lr=0.01), "step")])
def test_a_state_tensor_replaced_after_the_plan_is_the_one_updated(name, opts, key):
    """`opt.state[p][key] = new` (moving states between phases of training)
    needs no invalidate_plans(): later steps update the new tensor."""
    ours, ours_params, theirs, torch_params = _twins(name, opts)
    pairs = [(ours, ours_params), (theirs, torch_params)]
    _step(pairs, 0)
    _step(pairs, 1)
    assert ours._plans
    for opt, params in pairs:
        opt.state[params[1]][key] = opt.state[params[1]][key].clone()
    _step(pairs, 2)
    _step(pairs, 3)
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *FP32)
    assert ours._plans


def test_a_state_replaced_right_after_the_first_step_is_seen():
    ours, ours_params, theirs, torch_params = _twins("Adam", dict(lr=0.01))
    pairs = [(ours, ours_params), (theirs, torch_params)]
    _step(pairs, 0)  # builds the plan
    for opt, params in pairs:
        opt.state[params[0]] = {k: v.clone() for k, v in opt.state[params[0]].items()}
    _step(pairs, 1)
    _step(pairs, 2)
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS["Adam"], *FP32)


def test_a_param_replaced_in_the_group_is_the_one_updated():
    ours, ours_params, theirs, torch_params = _twins("Adam", dict(lr=0.01))
    pairs = [(ours, ours_params), (theirs, torch_params)]
    _step(pairs, 0)
    _step(pairs, 1)
    fresh = make_params([(3, 5)], torch.float32, seed=9)
    for opt, params, new in ((ours, ours_params, clone_params(fresh)[0]), (theirs, torch_params,
                                                                          clone_params(fresh)[0])):
        opt.param_groups[0]["params"][1] = new
        params[1] = new
    _step(pairs, 2)
    _step(pairs, 3)
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS["Adam"], *FP32)


def test_references_held_across_a_step_cost_one_slow_step():
    """Other references to the state tensors held while a step runs (a
    checkpoint being written, say): when they go, the plan takes one step on
    the slow path (which reads the optimizer's state afresh) and plans again.
    References taken and dropped between steps are not seen at all."""
    ours, ours_params, theirs, torch_params = _twins("Adam", dict(lr=0.01))
    pairs = [(ours, ours_params), (theirs, torch_params)]
    _step(pairs, 0)
    _step(pairs, 1)
    calls = []
    real = fusedopt._native.C.adam_step
    fusedopt._native.C.adam_step = lambda *a, **k: (calls.append(1), real(*a, **k))
    try:
        held = [t for state in ours.state.values() for t in state.values()]
        _step(pairs, 2)  # planned
        del held
        _step(pairs, 3)  # slow path, new plan
        held = [t for state in ours.state.values() for t in state.values()]
        del held
        _step(pairs, 4)  # planned
        _step(pairs, 5)  # planned
    finally:
        fusedopt._native.C.adam_step = real
    assert len(calls) == 3
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS["Adam"], *FP32)
