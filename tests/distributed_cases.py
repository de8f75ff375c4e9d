"""The cases of tests/test_distributed.py, run in real processes: 2 ranks on
gloo over 127.0.0.1 (one process group for all cases, so the suite pays for
starting processes once), then 1 rank for loading what 2 ranks saved.

Each case compares fusedopt with torch.optim (foreach=False) on the same
model, data and seed, or checks an error, and returns nothing or raises.
Rank results go to <out>/<case>.rank<r>: "ok" or the traceback.
"""
import os
import traceback

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict, get_state_dict,
                                                     set_optimizer_state_dict, set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

import fusedopt

STEPS = 3
FP32 = dict(rtol=2e-5, atol=2e-6)
DEVICE = "cpu"  # "cuda" in the NCCL run on a GPU machine (set by run())

# (optimizer, options): the five optimizers and their main options.
OPTIMIZERS = [
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
]


def _model(seed=0, dtype=torch.float32):
    """Uneven shards: 7 and 5 rows do not split evenly over 2 ranks."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.Tanh(), torch.nn.Linear(7, 5),
                               torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(dtype).to(DEVICE)


def _shard(model, mesh=None, mp_policy=None):
    kwargs = dict(mesh=mesh if mesh is not None else init_device_mesh(DEVICE, (dist.get_world_size(),)))
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 6, generator=g).to(DEVICE), torch.randn(8, 3, generator=g).to(DEVICE)


def _train(model, opt, steps, start=0, clip=None, scaler=None):
    for step in range(start, start + steps):
        x, y = _batch(step)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x.to(next(model.parameters()).dtype)).float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            continue
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()


def _make(library, name, params, opts):
    extra = dict(foreach=False) if library is torch.optim else {}
    return getattr(library, name)(params, **opts, **extra)


def _full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def assert_same(opt_a, model_a, opt_b, model_b, tol=FP32):
    """Every param (gathered) and every state key of opt_a matches opt_b,
    with the same types and layouts."""
    for i, (a, b) in enumerate(zip(model_a.parameters(), model_b.parameters())):
        torch.testing.assert_close(_full(a.detach()), _full(b.detach()), **tol, msg=lambda m: f"param {i}: {m}")
        sa, sb = opt_a.state[a], opt_b.state[b]
        assert set(sa) == set(sb), (i, sorted(sa), sorted(sb))
        for key in sa:
            x, y = sa[key], sb[key]
            assert type(x) is type(y), (i, key, type(x), type(y))
            if isinstance(x, DTensor):
                assert x.placements == y.placements and x.device_mesh == y.device_mesh, (i, key)
            if key == "step":
                assert float(_full(x)) == float(_full(y)), (i, key, float(_full(x)), float(_full(y)))
                continue
            torch.testing.assert_close(_full(x), _full(y), **tol, msg=lambda m: f"param {i} {key}: {m}")


# --------------------------------------------------------------------------- cases


def _fsdp2_parity(name, opts, **train):
    results = []
    for library in (torch.optim, fusedopt):
        model = _shard(_model())
        opt = _make(library, name, model.parameters(), opts)
        _train(model, opt, STEPS, **train)
        results.append((opt, model))
    (theirs, torch_model), (ours, our_model) = results
    assert isinstance(next(our_model.parameters()), DTensor)
    assert_same(ours, our_model, theirs, torch_model)
    assert ours._plans, "the cached plan was not built for DTensor params"


def case_fsdp2(index):
    name, opts = OPTIMIZERS[index]
    _fsdp2_parity(name, opts)


def case_fsdp2_clip_grad_norm():
    _fsdp2_parity("AdamW", dict(lr=0.01), clip=0.05)


def case_fsdp2_amp_grad_scaler():
    results = []
    for library in (torch.optim, fusedopt):
        model = _shard(_model())
        opt = _make(library, "Adam", model.parameters(), dict(lr=0.01))
        _train(model, opt, STEPS, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
        results.append((opt, model))
    (theirs, torch_model), (ours, our_model) = results
    assert_same(ours, our_model, theirs, torch_model)


def case_fsdp2_bf16_mixed_precision():
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    results = []
    for library in (torch.optim, fusedopt):
        model = _shard(_model(), mp_policy=policy)
        opt = _make(library, "AdamW", model.parameters(), dict(lr=0.01))
        _train(model, opt, STEPS)
        results.append((opt, model))
    (theirs, torch_model), (ours, our_model) = results
    assert next(our_model.parameters()).dtype == torch.float32  # the sharded master copy
    assert_same(ours, our_model, theirs, torch_model)


def case_fsdp2_stochastic_rounding_any_world_size():
    """bf16 params rounded stochastically give the same bits sharded over 2
    ranks (uneven shards) as unsharded: the bits are drawn by each element's
    index in the whole tensor."""
    opts = dict(lr=0.01, param_precision="stochastic", state_dtype=torch.bfloat16, stochastic_states=True, seed=5)
    sharded = _shard(_model(dtype=torch.bfloat16))
    opt = fusedopt.AdamW(sharded.parameters(), **opts)
    _train(sharded, opt, STEPS)
    whole = _model(dtype=torch.bfloat16)
    whole_opt = fusedopt.AdamW(whole.parameters(), **opts)
    _train(whole, whole_opt, STEPS)
    for i, (a, b) in enumerate(zip(sharded.parameters(), whole.parameters())):
        assert torch.equal(a.detach().full_tensor().view(torch.int16), b.detach().view(torch.int16)), i
        for key in ("exp_avg", "exp_avg_sq"):
            x, y = opt.state[a][key].full_tensor(), whole_opt.state[b][key]
            assert torch.equal(x.view(torch.int16), y.view(torch.int16)), (i, key)


def case_hsdp_2d_mesh():
    mesh = init_device_mesh(DEVICE, (1, dist.get_world_size()), mesh_dim_names=("replicate", "shard"))
    results = []
    for library in (torch.optim, fusedopt):
        model = _shard(_model(), mesh=mesh)
        opt = _make(library, "Adam", model.parameters(), dict(lr=0.01, weight_decay=0.01))
        _train(model, opt, STEPS)
        results.append((opt, model))
    (theirs, torch_model), (ours, our_model) = results
    assert next(our_model.parameters()).placements == (Replicate(), Shard(0))
    assert_same(ours, our_model, theirs, torch_model)


def _tp_params(placements_list):
    """DTensor params as tensor parallelism lays them out, with DTensor grads
    of the same layout (set by hand: the update does not care where they came from)."""
    mesh = init_device_mesh(DEVICE, (dist.get_world_size(),))
    g = torch.Generator().manual_seed(7)
    full = [torch.randn(6, 9, generator=g), torch.randn(5, 3, generator=g), torch.randn(11, generator=g)]
    params = [torch.nn.Parameter(distribute_tensor(t, mesh, placements))
              for t, placements in zip(full, placements_list)]
    return mesh, params


def case_tensor_parallel_placements():
    placements = [[Shard(1)], [Replicate()], [Shard(0)]]
    for name, opts in OPTIMIZERS:
        results = []
        for library in (torch.optim, fusedopt):
            mesh, params = _tp_params(placements)
            opt = _make(library, name, params, opts)
            for step in range(STEPS):
                g = torch.Generator().manual_seed(step)
                for p, pl in zip(params, placements):
                    p.grad = distribute_tensor(torch.randn(p.shape, generator=g), mesh, pl)
                opt.step()
            results.append((opt, torch.nn.ParameterList(params)))
        (theirs, torch_params), (ours, our_params) = results
        assert_same(ours, our_params, theirs, torch_params)


def _expect_error(fn, match):
    try:
        fn()
    except ValueError as error:
        assert match in str(error), str(error)
        return
    raise AssertionError(f"no ValueError ({match!r})")


def case_errors_leave_everything_unchanged():
    mesh, params = _tp_params([[Shard(0)], [Replicate()], [Shard(0)]])
    before = [p.detach().full_tensor().clone() for p in params]

    def unchanged(opt):
        for p, b in zip(params, before):
            assert torch.equal(p.detach().full_tensor(), b)
        assert all(len(s) == 0 for s in opt.state.values()) or not opt.state

    # A group mixing DTensors and plain tensors on one device.
    plain = torch.nn.Parameter(torch.zeros(3))
    opt = fusedopt.Adam([params[0], plain], lr=0.1)
    params[0].grad = distribute_tensor(torch.ones(6, 9), mesh, [Shard(0)])
    plain.grad = torch.ones(3)
    _expect_error(opt.step, "mixes DTensor and plain tensor params")
    unchanged(opt)
    # A grad laid out unlike its param.
    opt = fusedopt.SGD(params[:1], lr=0.1, momentum=0.9)
    params[0].grad = distribute_tensor(torch.ones(6, 9), mesh, [Replicate()])
    _expect_error(opt.step, "the grad of param 0 is laid out as")
    unchanged(opt)
    # A Partial grad: not yet reduced across ranks.
    params[0].grad = DTensor.from_local(torch.ones(6, 9), mesh, [Partial()], run_check=False)
    _expect_error(opt.step, "Partial placement")
    unchanged(opt)
    # 8-bit states of DTensor params: not supported yet, refused before any state exists.
    opt = fusedopt.Adam(params[:1], lr=0.1, state_dtype="8bit", quantize_threshold=0)
    params[0].grad = distribute_tensor(torch.ones(6, 9), mesh, [Shard(0)])
    _expect_error(opt.step, "8-bit states are not supported for DTensor")
    unchanged(opt)
    # A state laid out unlike its param (a hand-edited state).
    opt = fusedopt.Adam(params[:1], lr=0.1)
    params[0].grad = distribute_tensor(torch.ones(6, 9), mesh, [Shard(0)])
    opt.step()
    opt.state[params[0]]["exp_avg"] = distribute_tensor(torch.zeros(6, 9), mesh, [Replicate()])
    stepped = params[0].detach().full_tensor().clone()
    _expect_error(opt.step, "the exp_avg of param 0 is laid out as")
    assert torch.equal(params[0].detach().full_tensor(), stepped)


def case_plan_reads_local_grads():
    """The cached plan steps DTensors through their local shards: after the
    first step, a step is one native call and gives torch's results."""
    model = _shard(_model())
    opt = fusedopt.Adam(model.parameters(), lr=0.01)
    _train(model, opt, 1)
    calls = []
    real = fusedopt._native.C.adam_step
    fusedopt._native.C.adam_step = lambda *a, **k: (calls.append(1), real(*a, **k))
    try:
        _train(model, opt, 2, start=1)
    finally:
        fusedopt._native.C.adam_step = real
    assert calls == [1, 1], calls
    twin = _shard(_model())
    twin_opt = _make(torch.optim, "Adam", twin.parameters(), dict(lr=0.01))
    _train(twin, twin_opt, 3)
    assert_same(opt, model, twin_opt, twin)


def _dcp_round_trip(save_library, load_library, name, opts, path):
    """Train k steps with save_library, checkpoint with DCP, load into a fresh
    model and load_library optimizer, train on; compare with load_library
    trained without interruption."""
    model = _shard(_model())
    opt = _make(save_library, name, model.parameters(), opts)
    _train(model, opt, 2)
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)

    resumed = _shard(_model(seed=1))
    resumed_opt = _make(load_library, name, resumed.parameters(), opts)
    model_sd, optim_sd = get_state_dict(resumed, resumed_opt)  # runs a step with lr=0 to create the state
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(resumed, resumed_opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    _train(resumed, resumed_opt, 2, start=2)

    # Uninterrupted: the first steps as the checkpoint's writer took them,
    # the rest by the loading library from the writer's state.
    reference = _shard(_model())
    writer = _make(save_library, name, reference.parameters(), opts)
    _train(reference, writer, 2)
    reference_opt = _make(load_library, name, reference.parameters(), opts)
    reference_opt.load_state_dict(writer.state_dict())
    _train(reference, reference_opt, 2, start=2)
    assert_same(resumed_opt, resumed, reference_opt, reference)


def case_dcp_fusedopt_to_fusedopt(out):
    _dcp_round_trip(fusedopt, fusedopt, "AdamW", dict(lr=0.01, amsgrad=True), os.path.join(out, "ckpt-ff"))


def case_dcp_fusedopt_to_torch(out):
    _dcp_round_trip(fusedopt, torch.optim, "RMSprop", dict(lr=0.01, momentum=0.5), os.path.join(out, "ckpt-ft"))


def case_dcp_torch_to_fusedopt(out):
    _dcp_round_trip(torch.optim, fusedopt, "AdamW", dict(lr=0.01), os.path.join(out, "ckpt-tf"))


def case_dcp_save_for_one_rank(out):
    """Saves on 2 ranks what case_dcp_load_on_one_rank loads on 1, with the
    full tensors it must find written beside it."""
    model = _shard(_model())
    opt = fusedopt.Adam(model.parameters(), lr=0.01)
    _train(model, opt, 2)
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(out, "ckpt-2to1"))
    full = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    params = [p.full_tensor() for p in model.parameters()]
    if dist.get_rank() == 0:
        torch.save({"optim": full, "params": params}, os.path.join(out, "ckpt-2to1-expected.pt"))


def case_dcp_load_on_one_rank(out):
    """Loads the 2-rank checkpoint into a 1-rank FSDP2 model: same params and states."""
    expected = torch.load(os.path.join(out, "ckpt-2to1-expected.pt"), weights_only=False)
    model = _shard(_model(seed=3))
    opt = fusedopt.Adam(model.parameters(), lr=0.01)
    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=os.path.join(out, "ckpt-2to1"))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for p, full in zip(model.parameters(), expected["params"]):
        assert torch.equal(p.full_tensor(), full)
    loaded = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    for key, state in expected["optim"]["state"].items():
        for name, value in state.items():
            assert torch.equal(_full(loaded["state"][key][name]), _full(value)), (key, name)
    _train(model, opt, 1, start=2)  # and it steps


def case_ddp(bucket_view):
    results = []
    for library in (torch.optim, fusedopt):
        model = torch.nn.parallel.DistributedDataParallel(_model(), gradient_as_bucket_view=bucket_view)
        opt = _make(library, "AdamW", model.parameters(), dict(lr=0.01))
        _train(model, opt, STEPS)
        results.append((opt, model))
    (theirs, torch_model), (ours, our_model) = results
    assert_same(ours, our_model, theirs, torch_model)


def case_ddp_dcp_both_ways(out):
    for save_library, load_library in ((fusedopt, torch.optim), (torch.optim, fusedopt)):
        model = torch.nn.parallel.DistributedDataParallel(_model())
        opt = _make(save_library, "Adam", model.parameters(), dict(lr=0.01))
        _train(model, opt, 2)
        path = os.path.join(out, f"ckpt-ddp-{save_library.__name__}")
        dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=path)
        fresh = torch.nn.parallel.DistributedDataParallel(_model())
        fresh.load_state_dict(model.state_dict())
        fresh_opt = _make(load_library, "Adam", fresh.parameters(), dict(lr=0.01))
        state = {"optim": get_optimizer_state_dict(fresh, fresh_opt)}
        dcp.load(state, checkpoint_id=path)
        set_optimizer_state_dict(fresh, fresh_opt, state["optim"])
        for a, b in zip(model.parameters(), fresh.parameters()):
            for key in opt.state[a]:
                torch.testing.assert_close(fresh_opt.state[b][key], opt.state[a][key], rtol=0, atol=0)


def case_zero_redundancy_optimizer():
    from torch.distributed.optim import ZeroRedundancyOptimizer
    results = []
    for library in (torch.optim, fusedopt):
        model = torch.nn.parallel.DistributedDataParallel(_model())
        extra = dict(foreach=False) if library is torch.optim else {}
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=library.AdamW, lr=0.01, **extra)
        _train(model, opt, STEPS)
        opt.consolidate_state_dict(to=0)
        results.append((opt, model, opt.state_dict() if dist.get_rank() == 0 else None))
    (_, torch_model, torch_sd), (_, our_model, our_sd) = results
    for a, b in zip(our_model.parameters(), torch_model.parameters()):
        torch.testing.assert_close(a, b, **FP32)
    if dist.get_rank() == 0:
        assert our_sd["state"].keys() == torch_sd["state"].keys()
        for key, state in torch_sd["state"].items():
            for name, value in state.items():
                torch.testing.assert_close(our_sd["state"][key][name], value, **FP32)


TWO_RANK_CASES = {
    **{f"fsdp2-{name}-{i}": (lambda out, i=i: case_fsdp2(i)) for i, (name, _) in enumerate(OPTIMIZERS)},
    "fsdp2-clip-grad-norm": lambda out: case_fsdp2_clip_grad_norm(),
    "fsdp2-amp-grad-scaler": lambda out: case_fsdp2_amp_grad_scaler(),
    "fsdp2-bf16-mixed-precision": lambda out: case_fsdp2_bf16_mixed_precision(),
    "fsdp2-stochastic-rounding-any-world-size": lambda out: case_fsdp2_stochastic_rounding_any_world_size(),
    "hsdp-2d-mesh": lambda out: case_hsdp_2d_mesh(),
    "tensor-parallel-placements": lambda out: case_tensor_parallel_placements(),
    "errors-leave-everything-unchanged": lambda out: case_errors_leave_everything_unchanged(),
    "plan-reads-local-grads": lambda out: case_plan_reads_local_grads(),
    "dcp-fusedopt-to-fusedopt": case_dcp_fusedopt_to_fusedopt,
    "dcp-fusedopt-to-torch": case_dcp_fusedopt_to_torch,
    "dcp-torch-to-fusedopt": case_dcp_torch_to_fusedopt,
    "dcp-save-for-one-rank": case_dcp_save_for_one_rank,
    "ddp": lambda out: case_ddp(False),
    "ddp-gradient-as-bucket-view": lambda out: case_ddp(True),
    "ddp-dcp-both-ways": case_ddp_dcp_both_ways,
    "zero-redundancy-optimizer": lambda out: case_zero_redundancy_optimizer(),
}

ONE_RANK_CASES = {"dcp-load-on-one-rank": case_dcp_load_on_one_rank}


NCCL_CASES = {name: TWO_RANK_CASES[name] for name in TWO_RANK_CASES
              if name.startswith(("fsdp2", "hsdp", "plan", "dcp-fusedopt-to-fusedopt", "dcp-torch"))}


def run(rank, world_size, port, out, cases, device="cpu"):
    """Worker entry point (torch.multiprocessing.spawn): every case in order,
    each result written to its own file."""
    global DEVICE
    DEVICE = device
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world_size)
    table = NCCL_CASES if device == "cuda" else TWO_RANK_CASES if world_size == 2 else ONE_RANK_CASES
    try:
        for name in cases:
            try:
                table[name](out)
                result = "ok"
            except Exception:  # reported per case by the test
                result = traceback.format_exc()
            with open(os.path.join(out, f"{name}.rank{rank}"), "w") as f:
                f.write(result)
            dist.barrier()
    finally:
        dist.destroy_process_group()
