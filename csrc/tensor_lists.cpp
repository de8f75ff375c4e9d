#include "tensor_lists.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "message.h"

namespace fusedopt {
namespace {

cpu::Dtype kernel_dtype(const char* op, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return cpu::Dtype::kFloat32;
    case at::kDouble: return cpu::Dtype::kFloat64;
    case at::kBFloat16: return cpu::Dtype::kBFloat16;
    case at::kHalf: return cpu::Dtype::kFloat16;
    default:
      FUSEDOPT_CHECK(!t.is_complex(), "fusedopt.", op,
                  ": complex tensors are passed as torch.view_as_real views");
      FUSEDOPT_CHECK(false, "fusedopt.", op, ": params must be float32, float64, bfloat16 or float16, got ",
                  t.scalar_type());
  }
}

void check_like_param(const char* op, const char* name, size_t i, const at::Tensor& t,
                      const at::Tensor& param) {
  FUSEDOPT_CHECK(t.defined(), "fusedopt.", op, ": ", name, "[", i, "] is undefined");
  FUSEDOPT_CHECK(t.layout() == at::kStrided, "fusedopt.", op, ": ", name, "[", i,
              "] is sparse; sparse gradients and states are not supported");
  FUSEDOPT_CHECK(t.device() == param.device(), "fusedopt.", op, ": ", name, "[", i, "] is on ",
              t.device(), " but its param is on ", param.device());
  FUSEDOPT_CHECK(t.scalar_type() == param.scalar_type(), "fusedopt.", op, ": ", name, "[", i, "] is ",
              t.scalar_type(), " but its param is ", param.scalar_type());
  FUSEDOPT_CHECK(t.sizes() == param.sizes(), "fusedopt.", op, ": ", name, "[", i, "] has shape ",
              t.sizes(), " but its param has shape ", param.sizes());
}

void check_writable(const char* op, const char* name, size_t i, const at::Tensor& t) {
  FUSEDOPT_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, "fusedopt.", op, ": ", name, "[",
              i, "] has elements that share memory (an expanded view?); it cannot be updated in place");
}

// Two operands of one param that overlap in memory (a state that aliases its
// param, a grad that is its param) would make the in-place update read what
// it has just written: the result would depend on the kernel's order.
void check_disjoint(const char* op, const NamedList& a, const NamedList& b, size_t i) {
  const at::MemOverlapStatus status = at::get_overlap_status(a.tensors[i], b.tensors[i]);
  FUSEDOPT_CHECK(status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial, "fusedopt.",
                 op, ": ", a.name, "[", i, "] and ", b.name, "[", i,
                 "] share memory; a param, its grad and its states must be distinct tensors");
}

c10::StorageImpl* storage_of(const c10::TensorImpl* t) {
  return t->has_storage() ? t->unsafe_storage().unsafeGetStorageImpl() : nullptr;
}

// Between steps the metadata of thousands of small tensors (TensorImpl,
// StorageImpl, the step values) falls out of cache, and reading it tensor by
// tensor waits for one miss after another. A block of tensors is asked for
// first (impls, then their storages), so the misses overlap; blocks stay
// small enough that what was fetched is still in L1/L2 when it is read.
constexpr size_t kPrefetchBlock = 64;

template <class Lists>
void prefetch_block(const Lists& lists, size_t begin, size_t end) {
  for (at::TensorList tensors : lists) {
    for (size_t i = begin; i < end && i < tensors.size(); ++i) {
      const char* impl = reinterpret_cast<const char*>(tensors[i].unsafeGetTensorImpl());
      for (int line = 0; line < 4; ++line) __builtin_prefetch(impl + 64 * line);
    }
  }
  for (at::TensorList tensors : lists) {
    for (size_t i = begin; i < end && i < tensors.size(); ++i) {
      const at::Tensor& t = tensors[i];
      if (t.defined() && t.has_storage()) {
        __builtin_prefetch(t.unsafeGetTensorImpl()->unsafe_storage().unsafeGetStorageImpl());
      }
    }
  }
}

// Below this many tensors a second thread costs more than the misses it hides.
constexpr int64_t kParallelTensors = 256;

// Calls fn(i) for every i in [0, n), a block at a time after prefetching the
// block's metadata in `lists`; on torch's pool when n is large, since
// walking cold metadata waits on memory and two threads wait in parallel.
// fn must be safe to call concurrently for different i.
template <class Lists, class Fn>
void for_each_prefetched(const Lists& lists, size_t n, Fn&& fn) {
  const auto run = [&](size_t begin, size_t end) {
    for (size_t block = begin; block < end; block += kPrefetchBlock) {
      const size_t block_end = std::min(end, block + kPrefetchBlock);
      prefetch_block(lists, block, block_end);
      for (size_t i = block; i < block_end; ++i) fn(i);
    }
  };
  if (static_cast<int64_t>(n) < kParallelTensors) {
    run(0, n);
  } else {
    at::parallel_for(0, static_cast<int64_t>(n), kParallelTensors / 2,
                     [&](int64_t begin, int64_t end) { run(static_cast<size_t>(begin), static_cast<size_t>(end)); });
  }
}

}  // namespace

PreparedLists::PreparedLists(const char* op, c10::DeviceType device, at::TensorList params,
                             at::TensorList grads, std::initializer_list<NamedList> states,
                             at::TensorList reg_grads, bool grads_mutable)
    : grads_mutable_(grads_mutable) {
  const size_t n = params.size();
  FUSEDOPT_CHECK(grads.size() == n, "fusedopt.", op, ": got ", n, " params but ", grads.size(), " grads");
  std::vector<NamedList> inputs{{"grads", grads}};
  if (!reg_grads.empty()) {
    FUSEDOPT_CHECK(reg_grads.size() == n, "fusedopt.", op, ": got ", n, " params but ", reg_grads.size(),
                " regularization gradients");
    inputs.push_back({"reg_grads", reg_grads});
  }
  std::vector<NamedList> used;
  for (const NamedList& s : states) {
    if (!s.used) continue;
    FUSEDOPT_CHECK(s.tensors.size() == n, "fusedopt.", op, ": got ", n, " params but ", s.tensors.size(),
                   " ", s.name, s.tensors.empty() ? " (the options given need this state)" : "");
    used.push_back(s);
  }
  FUSEDOPT_CHECK(used.size() + 1 <= cpu::kMaxStates, "fusedopt.", op, ": too many state lists");

  lists_.count = static_cast<int64_t>(n);
  device_ = device;
  if (n > 0 && params[0].defined()) first_dtype_ = params[0].dtype();
  offset_.assign(n + 1, 0);
  for (size_t k = 0; k < inputs.size(); ++k) inputs_[k].resize(n);
  for (size_t k = 0; k <= used.size(); ++k) states_[k].resize(n);

  std::vector<at::TensorList> all{params};
  for (const NamedList& s : inputs) all.push_back(s.tensors);
  for (const NamedList& s : used) all.push_back(s.tensors);
  // The common case, tensor by tensor and independently; the numel of
  // tensor i goes to offset_[i + 1] until the prefix sum below. The rest is
  // left to the serial pass, which raises errors in index order.
  std::vector<uint8_t> slow(n, 0);
  for_each_prefetched(all, n, [&](size_t i) {
    const at::Tensor& param = params[i];
    if (!dense_like_param(param, inputs, used, i)) {
      slow[i] = 1;
      return;
    }
    states_[0][i] = param.data_ptr();
    for (size_t k = 0; k < inputs.size(); ++k) inputs_[k][i] = inputs[k].tensors[i].const_data_ptr();
    for (size_t k = 0; k < used.size(); ++k) states_[k + 1][i] = used[k].tensors[i].data_ptr();
    offset_[i + 1] = param.numel();
  });
  if (n > 0 && !slow[0]) lists_.dtype = kernel_dtype(op, params[0]);
  for (size_t i = 0; i < n; ++i) {
    if (slow[i]) prepare_slowly(op, device, params, inputs, used, i);
    offset_[i + 1] += offset_[i];
  }

  lists_.offset = offset_.data();
  lists_.grads = inputs_[0].data();
  if (inputs.size() > 1) lists_.reg_grads = inputs_[1].data();
  for (size_t k = 0; k <= used.size(); ++k) lists_.states[k] = states_[k].data();
}

// The common case, tested cheaply: a dense float param of the expected
// device and of params[0]'s dtype, with every operand of the same dtype,
// device, shape and strides (so no operand overlaps itself either), each in
// a storage of its own (so no two operands overlap).
bool PreparedLists::dense_like_param(const at::Tensor& param, const std::vector<NamedList>& inputs,
                                     const std::vector<NamedList>& used, size_t i) const {
  if (!param.defined()) return false;
  const c10::TensorImpl* p = param.unsafeGetTensorImpl();
  if (p->layout() != at::kStrided || p->device_type() != device_ || !p->is_non_overlapping_and_dense()) {
    return false;
  }
  const caffe2::TypeMeta dtype = p->dtype();
  if (i > 0 ? dtype != first_dtype_ : !at::isFloatingType(dtype.toScalarType())) return false;
  const c10::IntArrayRef sizes = p->sizes(), strides = p->strides();
  c10::StorageImpl* storages[cpu::kMaxStates + 2];
  size_t operands = 0;
  storages[operands++] = storage_of(p);
  const auto same = [&](const at::Tensor& tensor) {
    if (!tensor.defined()) return false;
    const c10::TensorImpl* t = tensor.unsafeGetTensorImpl();
    if (t->layout() != at::kStrided || t->dtype() != dtype || t->device() != p->device() ||
        t->dim() != p->dim()) {
      return false;
    }
    c10::StorageImpl* storage = storage_of(t);
    for (size_t k = 0; k < operands; ++k) {
      if (storages[k] == storage) return false;
    }
    storages[operands++] = storage;
    const c10::IntArrayRef t_sizes = t->sizes(), t_strides = t->strides();
    for (size_t d = 0; d < sizes.size(); ++d) {
      if (t_sizes[d] != sizes[d] || (sizes[d] > 1 && t_strides[d] != strides[d])) return false;
    }
    return true;
  };
  for (const NamedList& s : inputs) {
    if (!same(s.tensors[i])) return false;
  }
  for (const NamedList& s : used) {
    if (!same(s.tensors[i])) return false;
  }
  return true;
}

// Everything else: the checks that name the problem, then copies for layouts
// the kernel cannot walk as one dense run.
void PreparedLists::prepare_slowly(const char* op, c10::DeviceType device, at::TensorList params,
                                   const std::vector<NamedList>& inputs, const std::vector<NamedList>& used,
                                   size_t i) {
  const at::Tensor& param = params[i];
  FUSEDOPT_CHECK(param.defined(), "fusedopt.", op, ": params[", i, "] is undefined");
  FUSEDOPT_CHECK(param.layout() == at::kStrided, "fusedopt.", op, ": params[", i, "] is not strided");
  FUSEDOPT_CHECK(param.device().type() == device, "fusedopt.", op, ": params[", i, "] is on ", param.device(),
              "; this implementation handles ", c10::DeviceTypeName(device), " tensors");
  const cpu::Dtype dtype = kernel_dtype(op, param);
  if (i == 0) {
    lists_.dtype = dtype;
  } else {
    FUSEDOPT_CHECK(dtype == lists_.dtype, "fusedopt.", op, ": params[", i, "] is ", param.scalar_type(),
                " but params[0] is ", params[0].scalar_type(), "; one call takes one dtype");
  }
  check_writable(op, "params", i, param);
  for (const NamedList& s : inputs) check_like_param(op, s.name, i, s.tensors[i], param);
  if (grads_mutable_) check_writable(op, inputs[0].name, i, inputs[0].tensors[i]);
  for (const NamedList& s : used) {
    check_like_param(op, s.name, i, s.tensors[i], param);
    check_writable(op, s.name, i, s.tensors[i]);
  }
  // Read-only inputs may share memory with each other (classic's dw and dr),
  // and classic's dr may be its w itself (the seed's L2 term, dr = w: each
  // element is read before it is written); nothing else may share memory.
  std::vector<NamedList> operands{{"params", params}};
  operands.insert(operands.end(), inputs.begin(), inputs.end());
  operands.insert(operands.end(), used.begin(), used.end());
  const bool has_reg = inputs.size() > 1;
  const auto read_only = [&](size_t k) { return (k == 2 && has_reg) || (k == 1 && !grads_mutable_); };
  const auto same_view = [&](const at::Tensor& t) {
    return t.data_ptr() == param.data_ptr() && t.sizes() == param.sizes() && t.strides() == param.strides();
  };
  const bool reg_is_param = has_reg && same_view(inputs[1].tensors[i]);
  for (size_t a = 0; a < operands.size(); ++a) {
    for (size_t b = a + 1; b < operands.size(); ++b) {
      if (read_only(a) && read_only(b)) continue;
      if (a == 0 && b == 2 && reg_is_param) continue;
      check_disjoint(op, operands[a], operands[b], i);
    }
  }
  // Not dense with one layout: walk contiguous copies, written back in finish().
  auto copy = [&](const at::Tensor& t, bool mutated) {
    copies_.push_back(t.contiguous());
    if (mutated && !t.is_contiguous()) write_back_.emplace_back(t, copies_.back());
    return copies_.back().data_ptr();
  };
  states_[0][i] = copy(param, true);
  for (size_t k = 0; k < inputs.size(); ++k) inputs_[k][i] = copy(inputs[k].tensors[i], k == 0 && grads_mutable_);
  for (size_t k = 0; k < used.size(); ++k) states_[k + 1][i] = copy(used[k].tensors[i], true);
  offset_[i + 1] = param.numel();
}

void PreparedLists::finish() {
  for (auto& [original, copy] : write_back_) original.copy_(copy);
  write_back_.clear();
}

std::vector<double> increment_steps(const char* op, at::TensorList steps, size_t expected) {
  FUSEDOPT_CHECK(steps.size() == expected, "fusedopt.", op, ": got ", expected, " params but ",
              steps.size(), " state_steps");
  const size_t n = steps.size();
  // Every step is checked before any is counted, so a bad one changes none.
  enum Kind : uint8_t { kBad, kFloat32, kFloat64 };
  std::vector<uint8_t> kind(n, kBad);
  std::vector<void*> data(n, nullptr);
  for_each_prefetched(std::initializer_list<at::TensorList>{steps}, n, [&](size_t i) {
    const at::Tensor& s = steps[i];
    if (!s.defined() || s.numel() != 1 || !s.device().is_cpu()) return;
    const at::ScalarType type = s.scalar_type();
    if (type != at::kFloat && type != at::kDouble) return;
    kind[i] = type == at::kFloat ? kFloat32 : kFloat64;
    data[i] = s.data_ptr();
    __builtin_prefetch(data[i], 1);
  });
  std::vector<double> values(n);
  for (size_t i = 0; i < n; ++i) {
    if (kind[i] == kBad) {
      const at::Tensor& s = steps[i];
      FUSEDOPT_CHECK(s.defined() && s.numel() == 1 && s.device().is_cpu(), "fusedopt.", op,
                     ": state_steps[", i, "] must be a one-element CPU tensor");
      FUSEDOPT_CHECK(false, "fusedopt.", op, ": state_steps[", i, "] must be float32 or float64, got ",
                     s.scalar_type());
    }
    values[i] = kind[i] == kFloat32 ? double(*static_cast<float*>(data[i])) : *static_cast<double*>(data[i]);
    // A negative count (a hand-edited or corrupt state dict) would make the
    // first bias correction 1 - beta^0 = 0 and write NaN into the params.
    FUSEDOPT_CHECK_VALUE(values[i] >= 0.0 && std::isfinite(values[i]), "fusedopt.", op, ": state_steps[", i,
                         "] is ", values[i], "; a step count must be a finite number >= 0");
  }
  for (size_t i = 0; i < n; ++i) {
    if (kind[i] == kFloat32) {
      values[i] = *static_cast<float*>(data[i]) += 1.0f;
    } else {
      values[i] = *static_cast<double*>(data[i]) += 1.0;
    }
  }
  return values;
}

}  // namespace fusedopt
