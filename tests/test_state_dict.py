"""State dicts move between torch.optim and fusedopt both ways, through a
file, and training continues exactly as it would have."""
import pytest
import torch

import fusedopt
from helpers import STATE_KEYS, assert_same_state, clone_params, make_optimizer, make_params, run_steps, tolerances

SHAPES = [(7,), (31, 17), (0,), (1,)]
OPTIONS = {
    "SGD": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
    "Adagrad": dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
    "RMSprop": dict(lr=0.01, centered=True, momentum=0.9),
    "Adam": dict(lr=0.01, amsgrad=True, weight_decay=0.1),
    "AdamW": dict(lr=0.01, amsgrad=True),
}


def _save_and_load(optimizer, tmp_path):
    path = tmp_path / "optim.pt"
    torch.save(optimizer.state_dict(), path)
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("direction", ["torch_to_fusedopt", "fusedopt_to_torch"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_round_trip_continues_training(name, direction, tmp_path):
    first, second = (torch.optim, fusedopt) if direction == "torch_to_fusedopt" else (fusedopt, torch.optim)
    extra = {"foreach": False}
    base = make_params(SHAPES, torch.float32)

    # The run that never switches library: 5 + 5 steps of `first`.
    straight_params = clone_params(base)
    straight = make_optimizer(first, name, straight_params, OPTIONS[name], **(extra if first is torch.optim else {}))
    run_steps(straight, straight_params, 5)
    saved = _save_and_load(straight, tmp_path)
    params_at_switch = [p.detach().clone() for p in straight_params]
    run_steps(straight, straight_params, 5, start=5)

    # The switched run: the state of `first` loaded into `second` at step 5.
    switched_params = clone_params(params_at_switch)
    switched = make_optimizer(second, name, switched_params, OPTIONS[name],
                              **(extra if second is torch.optim else {}))
    switched.load_state_dict(saved)
    run_steps(switched, switched_params, 5, start=5)

    assert_same_state(switched, switched_params, straight, straight_params, STATE_KEYS[name],
                      *tolerances(torch.float32))


@pytest.mark.parametrize("name", list(OPTIONS))
def test_state_dict_layout_matches_torch(name):
    base = make_params(SHAPES, torch.float32)
    ours_params, torch_params = clone_params(base), clone_params(base)
    ours = make_optimizer(fusedopt, name, ours_params, OPTIONS[name])
    theirs = make_optimizer(torch.optim, name, torch_params, OPTIONS[name])
    run_steps(ours, ours_params, 2)
    run_steps(theirs, torch_params, 2)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, state in a["state"].items():
        assert state.keys() == b["state"][index].keys()
        for key, value in state.items():
            other = b["state"][index][key]
            assert (value.dtype, value.device, value.shape) == (other.dtype, other.device, other.shape), key


def test_adagrad_state_exists_before_the_first_step():
    """torch.optim.Adagrad creates its state in the constructor; so does fusedopt."""
    params = clone_params(make_params(SHAPES, torch.float32))
    ours = fusedopt.Adagrad(params, initial_accumulator_value=0.5)
    theirs = torch.optim.Adagrad(clone_params(params), initial_accumulator_value=0.5)
    assert ours.state_dict()["state"].keys() == theirs.state_dict()["state"].keys()
    for state in ours.state_dict()["state"].values():
        assert float(state["step"]) == 0 and bool((state["sum"] == 0.5).all())
