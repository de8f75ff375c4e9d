// The eager fast path. A param group's tensor lists are converted from Python
// once and kept here, so a step crosses from Python with its scalars only and
// gathers the gradients from the params in C++: no Python work per tensor.
// The step itself is the same dispatcher op that the list API calls.
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <optional>
#include <string>
#include <vector>

#include "message.h"

namespace fusedopt {
namespace {

// The accumulated gradient, read straight from autograd's record: Tensor::grad()
// would also dispatch is_leaf() for a warning that cannot apply to params.
const at::Tensor& grad_of(const at::Tensor& param) { return param.unsafeGetTensorImpl()->grad(); }

class CachedLists {
 public:
  // watched: the Python objects of the state tensors and step counts, whose
  // references tell when one has left the optimizer's state (replaced()).
  // dtensors: for DTensor params, the DTensors (params then holds their
  // local shards, which the op updates); each step reads their grads' local
  // shards through Python (local_grads()).
  // The rest is the call's low-precision storage (the ops' STEP_INPUTS),
  // fixed while these lists live: companions, param_precision, state_dtype
  // ("" for the params'), stochastic_states, seed, rng_ids, index_map.
  CachedLists(std::vector<at::Tensor> params, std::vector<std::vector<at::Tensor>> states,
              std::vector<at::Tensor> steps, const pybind11::list& watched, const pybind11::list& dtensors,
              std::vector<at::Tensor> companions, std::string param_precision, const std::string& state_dtype,
              bool stochastic_states, int64_t seed, std::vector<int64_t> rng_ids, std::vector<int64_t> index_map)
      : params_(std::move(params)),
        states_(std::move(states)),
        steps_(std::move(steps)),
        companions_(std::move(companions)),
        param_precision_(std::move(param_precision)),
        stochastic_states_(stochastic_states),
        seed_(seed),
        rng_ids_(std::move(rng_ids)),
        index_map_(std::move(index_map)) {
    if (state_dtype == "bfloat16") {
      state_dtype_ = at::kBFloat16;
    } else if (state_dtype == "float32") {
      state_dtype_ = at::kFloat;
    } else if (state_dtype == "uint8") {
      state_dtype_ = at::kByte;  // blockwise 8-bit
    } else {
      FUSEDOPT_CHECK(state_dtype.empty(), "fusedopt: unknown state dtype '", state_dtype, "'");
    }
    states_.resize(3);
    zeros_.assign(params_.size(), 0);
    for (const pybind11::handle& obj : watched) watched_.push_back(pybind11::reinterpret_borrow<pybind11::object>(obj));
    references_.assign(watched_.size(), 0);
    for (const pybind11::handle& obj : dtensors) {
      dtensors_.push_back(pybind11::reinterpret_borrow<pybind11::object>(obj));
      specs_.push_back(obj.attr("_spec"));
      grad_specs_.push_back(specs_.back());
      locals_.push_back(obj.attr("_local_tensor"));
    }
  }

  // Whether every param has a gradient and no state tensor has left the
  // optimizer's state (else the caller takes the slow path, which reads the
  // optimizer's state afresh). Between steps the params' metadata has left
  // the cache; the chain param -> autograd meta -> grad is fetched stage by
  // stage for all params at once, so the misses overlap instead of queueing
  // one behind the other.
  bool ready() {
    for (const at::Tensor& p : params_) __builtin_prefetch(p.unsafeGetTensorImpl());
    for (const pybind11::object& obj : watched_) __builtin_prefetch(obj.ptr());
    for (const at::Tensor& p : params_) __builtin_prefetch(p.unsafeGetTensorImpl()->autograd_meta());
    if (replaced()) return false;
    if (!dtensors_.empty()) return local_grads();
    for (const at::Tensor& p : params_) {
      const at::Tensor& g = grad_of(p);
      if (!g.defined()) return false;
      __builtin_prefetch(g.unsafeGetTensorImpl());
    }
    return true;
  }

  // DTensor params: whether each has a grad laid out as the param (the same
  // DTensorSpec object, as FSDP2 makes them, or an equal one) and still the
  // local shard these lists update; if so the grads' local shards are kept
  // for run(). A few attribute reads per param; anything else sends the step
  // down the slow path, which checks everything and names what is wrong.
  bool local_grads() {
    static PyObject* const kSpec = PyUnicode_InternFromString("_spec");
    static PyObject* const kLocal = PyUnicode_InternFromString("_local_tensor");
    const auto attr = [](PyObject* obj, PyObject* name) {
      return pybind11::reinterpret_steal<pybind11::object>(PyObject_GetAttr(obj, name));
    };
    local_grads_.clear();
    for (size_t i = 0; i < dtensors_.size(); ++i) {
      const pybind11::object local = attr(dtensors_[i].ptr(), kLocal);
      if (!local) throw pybind11::error_already_set();
      // The grad's Python object, without `param.grad`'s trip through
      // __torch_function__ handling (150 ns a param).
      const at::Tensor& wrapper_grad = grad_of(THPVariable_Unpack(dtensors_[i].ptr()));
      if (local.ptr() != locals_[i].ptr() || !wrapper_grad.defined()) return false;
      const pybind11::object grad = pybind11::reinterpret_steal<pybind11::object>(THPVariable_Wrap(wrapper_grad));
      const pybind11::object spec = attr(grad.ptr(), kSpec);
      const pybind11::object grad_local = attr(grad.ptr(), kLocal);
      if (!spec || !grad_local) {
        PyErr_Clear();  // not a DTensor: the slow path says so
        return false;
      }
      if (spec.ptr() != specs_[i].ptr() && spec.ptr() != grad_specs_[i].ptr()) {
        const int equal = PyObject_RichCompareBool(spec.ptr(), specs_[i].ptr(), Py_EQ);
        if (equal < 0) throw pybind11::error_already_set();
        if (equal == 0) return false;
        grad_specs_[i] = spec;  // a grad kept across steps is compared once
      }
      local_grads_.push_back(grad_local.cast<at::Tensor>());
    }
    return true;
  }

  // Records how many references each watched object has now: called once
  // the step that built these lists has dropped its own temporaries.
  void settle() {
    for (size_t i = 0; i < watched_.size(); ++i) references_[i] = Py_REFCNT(watched_[i].ptr());
  }

  // Whether a state tensor may have left the optimizer's state
  // (`opt.state[p]["exp_avg"] = t`, a state moved to another device, a new
  // state dict for p): some Python reference to it went away. Each object's
  // count of references is the most seen since settle(); a drop below it is
  // taken as a replacement. A reference that was taken and dropped elsewhere
  // (a state_dict() that was saved) costs one step on the slow path, which
  // builds new lists; a replaced tensor that its caller has held since
  // before these lists were built is not seen (the docs ask for
  // invalidate_plans() then).
  bool replaced() {
    bool dropped = false;
    for (size_t i = 0; i < watched_.size(); ++i) {
      const Py_ssize_t count = Py_REFCNT(watched_[i].ptr());
      dropped |= count < references_[i];
      references_[i] = std::max(references_[i], count);
    }
    return dropped;
  }

  size_t size() const { return params_.size(); }

  // The ops' trailing low-precision arguments, in schema order.
  const std::vector<at::Tensor>& companions() const { return companions_; }
  template <class Fn>
  void with_precision(Fn&& fn) const {
    fn(c10::string_view(param_precision_), state_dtype_, stochastic_states_, seed_, at::IntArrayRef(rng_ids_),
       at::IntArrayRef(index_map_));
  }

  // Runs fn(params, grads, states0, states1, states2, steps, zeros) with the
  // current gradients, holding them only for the call.
  template <class Fn>
  void run(Fn&& fn) {
    grads_.clear();
    grads_.reserve(params_.size());
    if (!dtensors_.empty()) {
      FUSEDOPT_CHECK(local_grads_.size() == params_.size(), "fusedopt: a DTensor step ran without ready()");
      grads_.swap(local_grads_);
    } else {
      for (const at::Tensor& p : params_) {
        const at::Tensor& g = grad_of(p);
        FUSEDOPT_CHECK(g.defined(), "fusedopt: a param lost its gradient during the step");
        grads_.push_back(g);
      }
    }
    {
      pybind11::gil_scoped_release no_gil;
      fn(params_, grads_, states_[0], states_[1], states_[2], steps_, zeros_);
    }
    grads_.clear();
  }


 private:
  std::vector<at::Tensor> params_;
  std::vector<std::vector<at::Tensor>> states_;
  std::vector<at::Tensor> steps_;
  std::vector<at::Tensor> grads_;
  std::vector<int64_t> zeros_;  // SGD's first_step flags once every buffer exists
  std::vector<pybind11::object> watched_;
  std::vector<Py_ssize_t> references_;
  // DTensor params, their specs and local shards, and the last grad spec found equal to the param's.
  std::vector<pybind11::object> dtensors_, specs_, locals_, grad_specs_;
  std::vector<at::Tensor> local_grads_;                      // read by ready(), used by run()
  std::vector<at::Tensor> companions_;
  std::string param_precision_;
  std::optional<at::ScalarType> state_dtype_;
  bool stochastic_states_;
  int64_t seed_;
  std::vector<int64_t> rng_ids_, index_map_;
};

template <class Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using L = at::TensorList;
using T = const std::optional<at::Tensor>&;
// The signature of a torch-style op: its own arguments, then the low-precision ones.
template <class... Head>
using Op = void(Head..., c10::string_view, std::optional<at::ScalarType>, bool, int64_t, at::IntArrayRef,
                at::IntArrayRef);

void adam_step(CachedLists& c, double lr, double beta1, double beta2, double weight_decay, double eps,
               bool amsgrad, bool maximize, bool decoupled_weight_decay, T lr_tensor, T grad_scale, T found_inf) {
  static const auto adam =
      op<Op<L, L, L, L, L, L, L, double, double, double, double, double, bool, bool, bool, T, T, T>>("fusedopt::adam_");
  c.run([&](auto& p, auto& g, auto& m, auto& v, auto& vmax, auto& steps, auto&) {
    c.with_precision([&](auto... precision) {
      adam.call(p, g, m, v, vmax, steps, c.companions(), lr, beta1, beta2, weight_decay, eps, amsgrad, maximize,
                decoupled_weight_decay, lr_tensor, grad_scale, found_inf, precision...);
    });
  });
}

void sgd_step(CachedLists& c, double lr, double weight_decay, double momentum, double dampening, bool nesterov,
              bool maximize, T lr_tensor, T grad_scale, T found_inf) {
  static const auto sgd =
      op<Op<L, L, L, L, L, double, double, double, double, bool, bool, at::IntArrayRef, T, T, T>>("fusedopt::sgd_");
  c.run([&](auto& p, auto& g, auto& buf, auto&, auto&, auto& steps, auto& zeros) {
    c.with_precision([&](auto... precision) {
      sgd.call(p, g, buf, steps, c.companions(), lr, weight_decay, momentum, dampening, nesterov, maximize,
               momentum != 0.0 ? at::IntArrayRef(zeros) : at::IntArrayRef(), lr_tensor, grad_scale, found_inf,
               precision...);
    });
  });
}

void adagrad_step(CachedLists& c, double lr, double lr_decay, double weight_decay, double eps, bool maximize,
                  T lr_tensor, T grad_scale, T found_inf) {
  static const auto adagrad =
      op<Op<L, L, L, L, L, double, double, double, double, bool, T, T, T>>("fusedopt::adagrad_");
  c.run([&](auto& p, auto& g, auto& sums, auto&, auto&, auto& steps, auto&) {
    c.with_precision([&](auto... precision) {
      adagrad.call(p, g, sums, steps, c.companions(), lr, lr_decay, weight_decay, eps, maximize, lr_tensor, grad_scale, found_inf,
                   precision...);
    });
  });
}

void rmsprop_step(CachedLists& c, double lr, double alpha, double eps, double weight_decay, double momentum,
                  bool centered, bool maximize, T lr_tensor, T grad_scale, T found_inf) {
  static const auto rmsprop =
      op<Op<L, L, L, L, L, L, L, double, double, double, double, double, bool, bool, T, T, T>>("fusedopt::rmsprop_");
  c.run([&](auto& p, auto& g, auto& sq, auto& buf, auto& grad_avg, auto& steps, auto&) {
    c.with_precision([&](auto... precision) {
      rmsprop.call(p, g, sq, buf, grad_avg, steps, c.companions(), lr, alpha, eps, weight_decay, momentum, centered, maximize,
                   lr_tensor, grad_scale, found_inf, precision...);
    });
  });
}

// Whether `list` still holds exactly the objects of `snapshot`, by identity:
// how a cached plan notices `group["params"][i] = q` for the price of a
// pointer comparison per param.
bool same_items(const pybind11::list& list, const pybind11::tuple& snapshot) {
  const Py_ssize_t n = PyList_GET_SIZE(list.ptr());
  if (n != PyTuple_GET_SIZE(snapshot.ptr())) return false;
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (PyList_GET_ITEM(list.ptr(), i) != PyTuple_GET_ITEM(snapshot.ptr(), i)) return false;
  }
  return true;
}

}  // namespace
}  // namespace fusedopt

// `import fusedopt._C` also loads the op registrations of the other files.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  using fusedopt::CachedLists;
  py::class_<CachedLists>(m, "CachedLists",
                          "A param group's params, states and steps, kept in C++ between steps.")
      .def(py::init<std::vector<at::Tensor>, std::vector<std::vector<at::Tensor>>, std::vector<at::Tensor>,
                    const py::list&, const py::list&, std::vector<at::Tensor>, std::string, const std::string&, bool,
                    int64_t, std::vector<int64_t>, std::vector<int64_t>>(),
           py::arg("params"), py::arg("states"), py::arg("steps"), py::arg("watched"), py::arg("dtensors"),
           py::arg("companions"), py::arg("param_precision"), py::arg("state_dtype"), py::arg("stochastic_states"),
           py::arg("seed"), py::arg("rng_ids"), py::arg("index_map"))
      .def("ready", &CachedLists::ready)
      .def("replaced", &CachedLists::replaced)
      .def("settle", &CachedLists::settle)
      .def("__len__", &CachedLists::size);
  m.def("same_items", &fusedopt::same_items, py::arg("list"), py::arg("snapshot"),
        "Whether the list holds exactly the snapshot's objects, compared by identity.");
#define STEP_INPUTS py::arg("lr_tensor") = py::none(), py::arg("grad_scale") = py::none(), \
                    py::arg("found_inf") = py::none()
  m.def("adam_step", &fusedopt::adam_step, py::arg("lists"), py::kw_only(), py::arg("lr"), py::arg("beta1"),
        py::arg("beta2"), py::arg("weight_decay"), py::arg("eps"), py::arg("amsgrad"), py::arg("maximize"),
        py::arg("decoupled_weight_decay"), STEP_INPUTS);
  m.def("sgd_step", &fusedopt::sgd_step, py::arg("lists"), py::kw_only(), py::arg("lr"), py::arg("weight_decay"),
        py::arg("momentum"), py::arg("dampening"), py::arg("nesterov"), py::arg("maximize"), STEP_INPUTS);
  m.def("adagrad_step", &fusedopt::adagrad_step, py::arg("lists"), py::kw_only(), py::arg("lr"),
        py::arg("lr_decay"), py::arg("weight_decay"), py::arg("eps"), py::arg("maximize"), STEP_INPUTS);
  m.def("rmsprop_step", &fusedopt::rmsprop_step, py::arg("lists"), py::kw_only(), py::arg("lr"), py::arg("alpha"),
        py::arg("eps"), py::arg("weight_decay"), py::arg("momentum"), py::arg("centered"), py::arg("maximize"),
        STEP_INPUTS);
}
