"""The shared step of every fusedopt optimizer.

A step walks each param group once: params with a gradient are bucketed by
(device, dtype), each bucket's state is created on first use exactly as
torch.optim creates it, and the whole bucket goes to ONE native op call (or,
where no native kernel exists, to the per-tensor reference).

After such a step, a group whose params all had gradients keeps its lists in
C++ (a "plan"); later steps pass only their scalars and the gradients are
gathered in C++, so a step costs no Python work per tensor. A plan is
dropped when the group's params list, the optimizer's state dict or the
group's state layout changes (add_param_group, load_state_dict, a new
`amsgrad`, ...), when a param of the group's list is replaced
(`group["params"][i] = q`), and when a state tensor leaves the optimizer's
state (`opt.state[p]["exp_avg"] = t`; see _Plan.matches for the one case
that needs `invalidate_plans()`).

Under torch.compile the plan is not used: dynamo runs _init_group eagerly
(creating state, as for torch.optim's optimizers) and the graph holds the op
calls of each bucket on the tensors it listed (_traced_step): one call, or
one per _TRACED_CALL_PARAMS params of a bigger bucket. Where it can, the
compiled step keeps the states of each call in one buffer per state list
(_flatten_states) and calls the op's `.flat` overload.
"""
import re

import torch
from torch.optim import Optimizer
from torch.optim.optimizer import _get_scalar_dtype

from . import _dtensor, _native, _precision
from .reference import low_precision
from ._distinct import check_distinct

# The most params one op call takes in a compiled step. Inductor's passes over
# an op that mutates lists of tensors spend, per mutated tensor, time in
# proportion to the op's whole argument list (its pattern replacement flattens
# every argument once per output, and reinplacing scans them), so one call on
# a bucket of n params compiles in O(n^2): Adam with 1000 params took 432 s to
# compile as one call, 65-69 s in calls of 64 params, 91 s of 128 and 136 s of
# 256 (docs/usage.md). Each call costs a little at run time (at most about 10%
# of that step). With flat states (_flatten_states) the size matters less:
# 2000 params compiled in 25-28 s in calls of 32, 64, 128 or 256.
_TRACED_CALL_PARAMS = 64


def as_float(x):
    """A hyperparameter as a Python float (tensor hyperparameters are read once
    per step on the host)."""
    return x.item() if isinstance(x, torch.Tensor) else float(x)


def new_step(param=None, capturable=False):
    """A fresh `step` state, laid out as torch.optim keeps it: a CPU scalar, or
    with `capturable` a float32 scalar on the param's device, counted there."""
    if capturable and param is not None and param.device.type != "cpu":
        return torch.zeros((), dtype=torch.float32, device=param.device)
    return torch.tensor(0.0, dtype=_get_scalar_dtype())


def check_hyperparameters(lr, **non_negative):
    """torch.optim's checks and messages: a one-element tensor lr, then each
    named value >= 0, in the order given."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    for name, value in {"lr": lr, **non_negative}.items():
        if not 0.0 <= value:
            what = {"lr": "learning rate", "eps": "epsilon value"}.get(name, f"{name} value")
            raise ValueError(f"Invalid {what}: {value}")


def check_common_flags(name, foreach, fused, differentiable):
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    if differentiable:
        raise RuntimeError(
            f"fusedopt.{name} does not support `differentiable=True`: its step runs outside "
            "autograd; use torch.optim for differentiable optimizer steps"
        )


class FusedOptimizer(Optimizer):
    """Base class: subclasses name their op and element lists and implement
    _gather (collect/create state), _hyper and _reference.

    AMP: torch.amp.GradScaler sees `_step_supports_amp_scaling` and, for the
    duration of step(), sets `grad_scale` and `found_inf` on the optimizer
    instead of unscaling the grads itself; the kernels divide the grads by
    grad_scale (storing them back unscaled, as torch's fused optimizers do)
    and change nothing, step counts included, when found_inf is nonzero.
    """

    _step_supports_amp_scaling = True

    _op = None  # name of the torch.ops.fusedopt op
    _op_lists = ()  # the op's list arguments, in schema order: keys of _gather's result (+ "companions")
    _element_lists = ()  # keys of _gather's result holding per-element tensors
    _state_lists = ()  # the states kept by a plan, in the op's order
    _setstate_defaults = {}  # group keys older state dicts may lack

    def __init__(self, params, defaults, backend=None):
        self.backend = _native.resolve_backend(backend)
        self._plans = {}
        super().__init__(params, defaults)

    _state_keys = {}  # the op's state lists -> their state keys
    _unsigned_states = ()  # state keys that are never negative (8-bit states code them unsigned)
    _state_signs = ()  # per state the reference's update takes, in its order: signed or not

    def invalidate_plans(self):
        """Forgets the cached C++ lists of every group; the next step rebuilds them."""
        self.__dict__.setdefault("_plans", {}).clear()
        self.__dict__.pop("_rng_id_map", None)

    def _rng_ids(self):
        """Each param's position among all the optimizer's params: the tensor
        part of stochastic rounding's keys, the same in every run of a model."""
        if self.__dict__.get("_rng_id_map") is None:
            self._rng_id_map = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        return self._rng_id_map

    def add_param_group(self, param_group):
        params = param_group.get("params") if isinstance(param_group, dict) else None
        if params is not None and not isinstance(params, (torch.Tensor, set)):
            param_group["params"] = params = list(params)  # a generator is read once
        if isinstance(params, list):
            check_distinct(type(self).__name__, getattr(self, "param_groups", []), params)
        self.invalidate_plans()
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict):
        _precision.check_quantize_code(state_dict)
        self.invalidate_plans()
        # A torch.optim state dict has no low-precision options: keep ours.
        kept = [{k: g[k] for k in (*_precision.GROUP_DEFAULTS, "quantize_threshold") if k in g} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, options, saved in zip(self.param_groups, kept, state_dict["param_groups"]):
            for key, value in options.items():
                if key not in saved:
                    group[key] = value
            if group.get("state_dtype") == "8bit":  # float states loaded are coded in this code at the next step
                group["quantize_code"] = _precision.QUANTIZE_CODE
        _precision.restore_dtypes(self, state_dict["state"])

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_plans", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("backend", _native.resolve_backend(None))
        self._plans = {}
        for group in self.param_groups:
            for key, value in self._setstate_defaults.items():
                group.setdefault(key, value)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if "step" in p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=_get_scalar_dtype())

    def _sparse_error(self):
        return f"{type(self).__name__} does not support sparse gradients"

    def _sparse_step(self, group, params):
        """Steps the params whose grads are sparse (torch.optim.SGD and Adagrad
        take them; the others refuse them, as here)."""
        raise RuntimeError(self._sparse_error())

    _takes_sparse = False

    def _runs_native(self, device):
        if self.backend == "reference":
            return False
        if _native.has_native_kernel(self._op, device):
            return True
        _native.warn_fallback(self._op, device)
        return False

    def _lr(self, group):
        """lr as the op's float: a tensor lr that the op reads itself (see
        _lr_tensor) is not read here."""
        return 0.0 if self._lr_tensor(group) is not None else as_float(group["lr"])

    def _lr_tensor(self, group):
        """A tensor lr for the op to read rather than a float read here: under
        torch.compile (reading it on the host would break the graph), and on
        the device with capturable (no step waits for the GPU)."""
        lr = group["lr"]
        if not isinstance(lr, torch.Tensor):
            return None
        if torch.compiler.is_compiling():
            return lr
        if (group.get("capturable", False) and lr.is_cuda and self.backend == "native"
                and _native.has_native_kernel(self._op, lr.device)):
            return lr
        return None

    def _step_inputs(self, group):
        """The ops' lr_tensor, grad_scale and found_inf for this group."""
        return dict(lr_tensor=self._lr_tensor(group), grad_scale=getattr(self, "grad_scale", None),
                    found_inf=getattr(self, "found_inf", None))

    def _amp_skips(self):
        """Whether AMP found an inf or NaN this step (read on the host)."""
        found_inf = getattr(self, "found_inf", None)
        return found_inf is not None and bool(found_inf.item())

    def _amp_skips_new_state(self, group):
        """A step that AMP skips creates no state, as with torch.optim (which
        GradScaler does not even call): where a param's state would be born,
        found_inf is read on the host first."""
        fresh = any(p.grad is not None and len(self.state.get(p, ())) == 0 for p in group["params"])
        return fresh and self._amp_skips()

    def _unscale(self, grads):
        grad_scale = getattr(self, "grad_scale", None)
        if grad_scale is not None:
            for g in grads:
                g.div_(grad_scale.to(g.device))

    def _check_capture(self):
        """torch.optim's rule: a step captured in a CUDA graph must keep its step
        counts on the device (capturable=True); host counts would not advance
        on replay."""
        if (self._counts_steps and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
                and not all(group.get("capturable", False) for group in self.param_groups)):
            raise RuntimeError(
                f"Attempting CUDA graph capture of step() for an instance of {type(self).__name__} but "
                "param_groups' capturable is False.")

    _counts_steps = True  # the algorithm keeps a per-param step count

    @torch.no_grad()
    def step(self, closure=None):
        """Performs a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        if torch.compiler.is_compiling():
            self._traced_step()
        else:
            _eager_step_untraced(self)
        return loss

    def _eager_step(self):
        self._check_capture()
        for group in self.param_groups:
            if not self._step_planned(group):
                self._step_group(group)

    def _buckets(self, group):
        """The group's params with dense grads by (device, dtype, is a DTensor,
        8-bit states), those with sparse grads, and whether every param has a grad."""
        buckets = {}
        sparse = []
        every_param_has_grad = True
        for p in group["params"]:
            if p.grad is None:
                every_param_has_grad = False
            elif p.grad.is_sparse:
                sparse.append(p)
            else:
                key = (p.device, p.dtype, _dtensor.is_dtensor(p), _precision.quantized(group, p))
                buckets.setdefault(key, []).append(p)
        if sparse and not self._takes_sparse:
            raise RuntimeError(self._sparse_error())
        return buckets, sparse, every_param_has_grad

    def _gather_buckets(self, group, buckets):
        """(key, params, lists) per bucket, state created: every bucket is
        gathered and checked before any is stepped. Complex tensors are left
        for the caller to view as real."""
        name = type(self).__name__
        if any(key[2] for key in buckets):
            _dtensor.check_group(name, self.param_groups.index(group), [p for ps in buckets.values() for p in ps])
            for (_, _, distributed, _), params in buckets.items():
                if distributed:
                    _dtensor.check_grads(name, params, group["params"])
        if any(distributed and quantized for _, _, distributed, quantized in buckets):
            # Checked here, before any state exists: blocks of 256 over a shard would depend on the sharding.
            raise ValueError(f"fusedopt.{name}: 8-bit states are not supported for DTensor (FSDP2) params yet")
        gathered = []
        for key, params in buckets.items():
            lists = _precision.gather(self, group, params, self._gather(group, params), self._state_keys)
            if lists["precision"] and key[1].is_complex:
                raise ValueError(f"fusedopt.{name}: the low-precision options do not apply to complex params")
            if key[2]:
                _dtensor.to_local(name, lists, self._element_lists + ("companions",), params, group["params"])
                lists["dtensor_params"] = params
            gathered.append((key, params, lists))
        return gathered

    def _as_real(self, lists):
        for key in self._element_lists:
            lists[key] = [torch.view_as_real(t) for t in lists[key]]

    def _step_group(self, group):
        self._hyper(group)  # its checks raise before any state is created
        if getattr(self, "found_inf", None) is not None and self._amp_skips_new_state(group):
            return
        buckets, sparse, every_param_has_grad = self._buckets(group)
        plannable = every_param_has_grad and not sparse and _native.native_loaded()
        gathered = self._gather_buckets(group, buckets)
        planned = []
        for (device, dtype, _, _), params, lists in gathered:
            if dtype.is_complex:
                plannable = False
                self._as_real(lists)
            if self._runs_native(device):
                try:
                    self._run_native(group, lists)
                except (RuntimeError, ValueError) as error:
                    raise _locate(error, self.param_groups, group, params) from None
                planned.append(lists)
            else:
                plannable = False
                if self._amp_skips():
                    continue
                self._unscale(lists["grads"])
                self._reference(group, lists)
        if sparse and not self._amp_skips():
            self._unscale([p.grad for p in sparse])
            self._sparse_step(group, sparse)
        if plannable and planned:
            self._plans.pop(id(group), None)  # the old plan's references go first too
            plan = _Plan(self, group, planned)
            # The plan counts references to the state tensors from here on
            # (CachedLists.replaced): this step's own references go first.
            del lists, planned, gathered
            plan.settle()
            self._plans[id(group)] = plan

    def _traced_step(self):
        """The step as torch.compile traces it: the op calls of each bucket
        and nothing else. Dynamo runs _init_group eagerly, outside the graph,
        and passes the tensors it lists to the graph as inputs; the scalars
        come from the groups, as constants the compiled code is guarded on
        (or a tensor lr, read by the op)."""
        layouts = []
        for group in self.param_groups:
            tensors = []
            layouts.append((group, tensors, self._init_group(group, tensors)))
        # Outside the loop: dynamo resumes after a graph break there.
        if any(layout is None for _, _, layout in layouts):
            _eager_step_untraced(self)
            return
        for group, tensors, layout in layouts:
            start = 0
            for flat, calls, is_complex, withheld, guarded in layout:
                for counts, first_step, precision in calls:
                    lists = {}
                    for key, count in zip(self._op_lists, counts):
                        lists[key] = tensors[start:start + count]
                        start += count
                        if flat and key in self._flat_lists:
                            lists[key] = lists[key][0] if count else None
                    lists["first_step"] = list(first_step)
                    lists["precision"] = dict(precision)
                    if flat:
                        lists["flat"] = True
                        self._run_native(group, lists)
                        continue
                    self._restore_new_state(lists, withheld)
                    if is_complex:
                        self._as_real(lists)
                    for part in self._traced_calls(lists):
                        self._run_native(group, part)
                start += guarded  # listed for dynamo's guards only

    def _traced_calls(self, lists):
        """A bucket's lists as the op calls of a compiled step: of at most
        _TRACED_CALL_PARAMS params each (see there why). What is per tensor
        is cut alike; each tensor keeps its own rng id, so stochastic rounding
        draws the same bits as in one call."""
        n = len(lists["params"])
        if n <= _TRACED_CALL_PARAMS:
            yield lists
            return
        for part in _call_parts(n):
            cut = {key: value[part] if len(value) == n else value
                   for key, value in lists.items() if key != "precision"}
            precision = dict(lists["precision"])
            if "rng_ids" in precision:
                precision["rng_ids"] = precision["rng_ids"][part]
            if "index_map" in precision:  # three numbers per tensor
                precision["index_map"] = precision["index_map"][3 * part.start:3 * part.stop]
            cut["precision"] = precision
            yield cut

    def _check_bucket(self, group, lists, is_complex):
        """Runs the op's checks on a whole bucket that a compiled step cuts
        into several calls, while dynamo traces (in _init_group): a bucket
        the op refuses then fails before any part of it is updated. The op
        checks every list before it reads found_inf, and with found_inf set
        changes nothing. At run time the guards keep every tensor's shape,
        dtype and device as checked; only the step counts' values are read
        again, and a count edited to a negative or non-finite value after
        compiling is refused by the call that holds it, after the calls
        before it have stepped."""
        if len(lists["params"]) > _TRACED_CALL_PARAMS:
            checked = dict(lists, check_only=True)
            if is_complex:
                self._as_real(checked)
            self._run_native(group, checked)

    def _init_group(self, group, tensors):
        """Prepares a group's compiled step; torch.compile calls it eagerly
        while tracing (as for torch.optim's optimizers), then guards on the
        params, grads and state it saw. Creates missing state, checks the
        params and appends every bucket's op lists to `tensors`. Returns per
        bucket what the traced step needs besides: whether its states come
        flat (_flatten_states), its calls (the lists' lengths, first_step and
        the precision arguments of each), whether complex, the new states
        withheld from the state (_withhold_new_state) and how many tensors
        follow the calls for the guards alone; None where the group cannot
        step in a graph (see _eager_step_untraced)."""
        buckets, sparse, _ = self._buckets(group)
        if sparse or not self._hyper_traceable(group) or any(
                distributed or not self._runs_native(device) for device, _, distributed, _ in buckets):
            return None
        layout = []
        for (_, dtype, _, quantized), _, lists in self._gather_buckets(group, buckets):
            self._check_bucket(group, lists, dtype.is_complex)
            withheld = self._withhold_new_state(lists)
            if not (dtype.is_complex or quantized or withheld) and self._flatten_states(group, lists):
                calls = []
                for part in self._traced_calls(lists):
                    counts = []
                    for key in self._op_lists:
                        listed = part.get(key, ())
                        if key in self._flat_lists:
                            listed = [listed[0]._base] if listed else []
                        tensors.extend(listed)
                        counts.append(len(listed))
                    calls.append((tuple(counts), tuple(part.get("first_step", ())),
                                  tuple(part["precision"].items())))
                # The state tensors themselves: dynamo guards each, so a state
                # replaced after compiling makes the step compile (and flatten) again.
                guarded = [t for key in self._flat_lists for t in lists.get(key, ())]
                tensors.extend(guarded)
                layout.append((True, tuple(calls), False, (), len(guarded)))
                continue
            for key in self._op_lists:
                tensors.extend(lists.get(key, ()))
            call = (tuple(len(lists.get(key, ())) for key in self._op_lists), tuple(lists.get("first_step", ())),
                    tuple(lists["precision"].items()))
            layout.append((False, (call,), dtype.is_complex, withheld, 0))
        return tuple(layout)

    @property
    def _flat_lists(self):
        """The op lists a compiled step passes as one flat tensor each."""
        return tuple(key for key in self._op_lists if key in self._state_lists or key == "state_steps")

    def _flatten_states(self, group, lists):
        """Lays out a bucket's states for the compiled step's `.flat` op calls:
        per call of _traced_calls and per state list (step counts included),
        the tensors become consecutive views of one 1-d buffer (their
        `_base`), in the state and in `lists`. A layout made before is kept;
        otherwise the values are copied into a new buffer. Returns False,
        changing nothing, where the op must get lists: under AMP (grads are
        unscaled in place), and where a param is not contiguous or a state is
        not exactly what the op takes (the list op then names the problem).

        Why: every tensor the op mutates costs inductor time in proportion
        to the op's arguments; Adam over 2000 params compiled in about 85 s
        with lists and about 3x faster with flat states and read-only grads
        (docs/usage.md)."""
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            return False
        params, grads = lists["params"], lists["grads"]
        if not all(p.is_contiguous() for p in params):
            return False
        storages = [{p.untyped_storage().data_ptr(), g.untyped_storage().data_ptr()} for p, g in zip(params, grads)]
        for key in self._flat_lists:
            listed = lists.get(key, ())
            if not listed:
                continue
            first = listed[0]
            if len(listed) != len(params) or any(
                    t.dtype != first.dtype or t.device != first.device or t.layout != torch.strided
                    or (t.dim() != 0 if key == "state_steps" else (t.shape != p.shape or not t.is_contiguous()))
                    or (t.numel() and t.untyped_storage().data_ptr() in storage)
                    for t, p, storage in zip(listed, params, storages)):
                return False
        # An eager plan holds the states: dropped first, so a state copied is freed at once.
        self._plans.pop(id(group), None)
        for part in _call_parts(len(params)):
            for key in self._flat_lists:
                if lists.get(key):
                    self._flatten_part(lists, key, part)
        return True

    def _flatten_part(self, lists, key, part):
        listed = lists[key]
        tensors = listed[part]
        if _consecutive_views(tensors):
            return
        scalars = key == "state_steps"
        state_key = "step" if scalars else self._state_keys[key]
        first = tensors[0]
        flat = torch.empty(len(tensors) if scalars else sum(t.numel() for t in tensors), dtype=first.dtype,
                           device=first.device)
        offset = 0
        for i, t in zip(range(part.start, part.stop), tensors):
            numel = 1 if scalars else t.numel()
            view = flat[offset] if scalars else flat[offset:offset + numel].view(t.shape)
            view.copy_(t)
            offset += numel
            listed[i] = self.state[lists["params"][i]][state_key] = view

    def _hyper_traceable(self, group):
        """Whether the op can take the group's hyperparameters inside a graph."""
        return True

    def _withhold_new_state(self, lists):
        """Takes state whose creation changes the compiled step back out of the
        state, so that the guards see it missing and the next call compiles
        again; returns its indices in the bucket for _restore_new_state."""
        return ()

    def _restore_new_state(self, lists, withheld):
        """Puts withheld state back, from the traced step."""

    def _step_planned(self, group):
        plan = self._plans.get(id(group)) if self._plans else None
        if plan is None:
            return False
        if not plan.matches(self, group):
            del self._plans[id(group)]
            return False
        if not all(lists.ready() for lists in plan.lists):
            return False
        step_fn = getattr(_native.C, f"{self._op.rstrip('_')}_step")
        hyper = self._hyper(group)
        inputs = self._step_inputs(group)
        for lists, params in zip(plan.lists, plan.bucket_params):
            try:
                step_fn(lists, **hyper, **inputs)
            except (RuntimeError, ValueError) as error:
                raise _locate(error, self.param_groups, group, params) from None
        return True

    def _structure(self, group):
        """What of a group decides which state lists exist (a plan is only
        reused while this is unchanged)."""
        return None

    def _plan_key(self, group):
        return self._structure(group), tuple(group.get(k) for k in _precision.GROUP_DEFAULTS)

    def _native_inputs(self, group, lists):
        """The op's trailing inputs: AMP, a device lr, and the low-precision storage."""
        inputs = self._step_inputs(group)
        if lists.get("flat"):  # no AMP there (_flatten_states)
            del inputs["grad_scale"], inputs["found_inf"]
        inputs.update(lists["precision"])
        if lists.get("check_only"):
            inputs["found_inf"] = torch.ones(())
        return inputs

    def _reference_step(self, update, group, lists, i, states, count=None, **hyper):
        """fusedopt.reference's `update` on the i-th tensor of a bucket, through
        reference.low_precision where the group keeps it in low precision.
        count: the tensor's step count after this step's increment."""
        precision = lists["precision"]
        if not precision:
            update(lists["params"][i], lists["grads"][i], *states, **hyper)
            return
        key, index = 0, None
        if "rng_ids" in precision:
            key = low_precision.stream_key(precision["seed"], precision["rng_ids"][i], int(count))
            maps = precision.get("index_map")
            index = low_precision.global_index(lists["params"][i].numel(),
                                               None if maps is None else maps[3 * i:3 * i + 3])
        companion = lists["companions"][i] if lists["companions"] else None
        low_precision.step(update, lists["params"][i], lists["grads"][i], states,
                           param_precision=precision["param_precision"], companion=companion,
                           stochastic_states=precision["stochastic_states"], key=key, index=index,
                           signs=self._state_signs, **hyper)

    def _hyper(self, group):
        """The op's scalar arguments for this group, as Python floats and bools."""
        raise NotImplementedError

    def _run_native(self, group, lists):
        self._native_op(lists)(*(lists[k] for k in self._op_lists), **self._hyper(group),
                               **self._native_inputs(group, lists))

    def _native_op(self, lists):
        """The op, or its `.flat` overload for the flat lists of a compiled step."""
        op = getattr(torch.ops.fusedopt, self._op)
        return op.flat if lists.get("flat") else op

    def _gather(self, group, params):
        raise NotImplementedError

    def _reference(self, group, lists):
        raise NotImplementedError


def _call_parts(n):
    """The params of each op call of a compiled step over a bucket of n
    params: slices of at most _TRACED_CALL_PARAMS, in order."""
    return [slice(start, min(n, start + _TRACED_CALL_PARAMS)) for start in range(0, n, _TRACED_CALL_PARAMS)]


def _consecutive_views(tensors):
    """Whether the tensors are, in order, contiguous views that tile their
    common 1-d contiguous base from its first element to its last."""
    base = tensors[0]._base
    if base is None or base.dim() != 1 or not base.is_contiguous():
        return False
    offset = base.storage_offset()
    for t in tensors:
        if t._base is not base or t.dtype != base.dtype or t.storage_offset() != offset or not t.is_contiguous():
            return False
        offset += t.numel()
    return offset == base.storage_offset() + base.numel()


@torch.compiler.disable(reason="fusedopt steps eagerly: a param group has params without a native kernel "
                                "(or backend='reference'), sparse grads, DTensor params or tensor betas")
def _eager_step_untraced(optimizer):
    # The eager step's per-param Python is never traced, also where it runs
    # inside a compiled function (a graph break, a frame dynamo gave up on
    # after too many recompiles): dynamo would compile it frame by frame.
    optimizer._eager_step()


_INDEXED_NAME = re.compile(r"\b([a-z_]+)\[(\d+)\]")


def _locate(error, param_groups, group, bucket):
    """The op's error, with the first `list[i]` it names (an index into the
    params of one (device, dtype) bucket of a group) located in param_groups."""
    message = str(error)
    match = _INDEXED_NAME.search(message)
    if match is None or int(match.group(2)) >= len(bucket):
        return error
    param = bucket[int(match.group(2))]
    g = next((g for g, candidate in enumerate(param_groups) if candidate is group), None)
    i = next((i for i, p in enumerate(group["params"]) if p is param), None)
    if g is None or i is None:
        return error
    what = _SINGULAR.get(match.group(1), match.group(1))
    return type(error)(f"{message}\n({match.group(0)} is the {what} of param_groups[{g}]['params'][{i}], "
                       f"shape {tuple(param.shape)}, {param.dtype})")


_SINGULAR = {"params": "param", "grads": "grad", "exp_avgs": "exp_avg", "exp_avg_sqs": "exp_avg_sq",
             "max_exp_avg_sqs": "max_exp_avg_sq", "state_steps": "step", "momentum_buffers": "momentum_buffer",
             "state_sums": "sum", "square_avgs": "square_avg", "grad_avgs": "grad_avg"}


def _plan_precision(precision):
    """The low-precision arguments as CachedLists keeps them."""
    state_dtype = precision.get("state_dtype")
    return dict(param_precision=precision.get("param_precision", "nearest"),
                state_dtype="" if state_dtype is None else str(state_dtype).replace("torch.", ""),
                stochastic_states=precision.get("stochastic_states", False), seed=precision.get("seed", 0),
                rng_ids=precision.get("rng_ids", []), index_map=precision.get("index_map", []))


class _Plan:
    """A group's lists kept in C++, and what they were built from."""

    def __init__(self, optimizer, group, bucket_lists):
        self.params = group["params"]
        self.snapshot = tuple(self.params)
        self.count = len(self.params)
        self.state = optimizer.state
        self.state_count = len(optimizer.state)
        self.structure = optimizer._plan_key(group)
        self.backend = optimizer.backend
        self.bucket_params = [lists.get("dtensor_params", lists["params"]) for lists in bucket_lists]
        self.lists = [
            _native.C.CachedLists(lists["params"], [lists[k] for k in optimizer._state_lists],
                                  lists.get("state_steps", []),
                                  [t for k in optimizer._state_lists + ("state_steps", "companions")
                                   for t in lists.get(k, ())],
                                  lists.get("dtensor_params", []), lists["companions"],
                                  **_plan_precision(lists["precision"]))
            for lists in bucket_lists
        ]

    def settle(self):
        for lists in self.lists:
            lists.settle()

    def matches(self, optimizer, group):
        """Whether the plan still describes the group. A replaced state tensor
        is seen by CachedLists.ready() (a reference to it went away); one
        whose caller held it since before the plan was built is not, and
        needs invalidate_plans()."""
        return (group["params"] is self.params and type(self.params) is list
                and _native.C.same_items(self.params, self.snapshot)
                and optimizer.state is self.state and len(optimizer.state) == self.state_count
                and optimizer.backend == self.backend and optimizer._plan_key(group) == self.structure)
