#include "tensor_lists.h"

#include <ATen/MemoryOverlap.h>
#include <c10/core/TensorImpl.h>

#include <algorithm>
#include <cmath>

#include "cpu/slot_pool.h"
#include "message.h"

namespace fusedopt {
namespace {

cpu::Dtype kernel_dtype(const char* op, at::ScalarType type) {
  switch (type) {
    case at::kFloat: return cpu::Dtype::kFloat32;
    case at::kDouble: return cpu::Dtype::kFloat64;
    case at::kBFloat16: return cpu::Dtype::kBFloat16;
    case at::kHalf: return cpu::Dtype::kFloat16;
    default:
      FUSEDOPT_CHECK(!at::isComplexType(type), "fusedopt.", op,
                     ": complex tensors are passed as torch.view_as_real views");
      FUSEDOPT_CHECK(false, "fusedopt.", op, ": params must be float32, float64, bfloat16 or float16, got ",
                     type);
  }
}

// t belongs to `param` in list `name`: defined, strided, on its device, of its
// shape, and of `dtype` (the param's when not given).
void check_like_param(const char* op, const char* name, size_t i, const at::Tensor& t, const at::Tensor& param,
                      std::optional<at::ScalarType> dtype) {
  FUSEDOPT_CHECK(t.defined(), "fusedopt.", op, ": ", name, "[", i, "] is undefined");
  FUSEDOPT_CHECK(t.layout() == at::kStrided, "fusedopt.", op, ": ", name, "[", i,
                 "] is sparse; sparse gradients and states are not supported");
  FUSEDOPT_CHECK(t.device() == param.device(), "fusedopt.", op, ": ", name, "[", i, "] is on ", t.device(),
                 " but its param is on ", param.device());
  if (dtype.has_value()) {
    FUSEDOPT_CHECK(t.scalar_type() == *dtype, "fusedopt.", op, ": ", name, "[", i, "] is ", t.scalar_type(),
                   " but this call keeps ", name, " in ", *dtype);
  } else {
    FUSEDOPT_CHECK(t.scalar_type() == param.scalar_type(), "fusedopt.", op, ": ", name, "[", i, "] is ",
                   t.scalar_type(), " but its param is ", param.scalar_type());
  }
  FUSEDOPT_CHECK(t.sizes() == param.sizes(), "fusedopt.", op, ": ", name, "[", i, "] has shape ", t.sizes(),
                 " but its param has shape ", param.sizes());
}

void check_writable(const char* op, const char* name, size_t i, const at::Tensor& t) {
  FUSEDOPT_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, "fusedopt.", op, ": ", name, "[",
              i, "] has elements that share memory (an expanded view?); it cannot be updated in place");
}

// Two operands of one param that overlap in memory (a state that aliases its
// param, a grad that is its param) would make the in-place update read what
// it has just written: the result would depend on the kernel's order.
void check_disjoint(const char* op, const char* a_name, const at::Tensor& a, const char* b_name,
                    const at::Tensor& b, size_t i) {
  const at::MemOverlapStatus status = at::get_overlap_status(a, b);
  FUSEDOPT_CHECK(status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial, "fusedopt.",
                 op, ": ", a_name, "[", i, "] and ", b_name, "[", i,
                 "] share memory; a param, its grad and its states must be distinct tensors");
}

int64_t packed_bytes(int64_t numel) { return math::quant_blocks(numel) * math::kQuantBlockBytes; }

// An 8-bit state of `param`: its codes and block absmaxes in one contiguous uint8 tensor.
void check_packed(const char* op, const char* name, size_t i, const at::Tensor& t, const at::Tensor& param) {
  FUSEDOPT_CHECK(t.defined() && t.layout() == at::kStrided, "fusedopt.", op, ": ", name, "[", i,
                 "] is undefined or not strided");
  FUSEDOPT_CHECK(t.device() == param.device(), "fusedopt.", op, ": ", name, "[", i, "] is on ", t.device(),
                 " but its param is on ", param.device());
  FUSEDOPT_CHECK(t.scalar_type() == at::kByte && t.is_contiguous() && t.numel() == packed_bytes(param.numel()),
                 "fusedopt.", op, ": ", name, "[", i, "] must be an 8-bit state: a contiguous uint8 tensor of ",
                 packed_bytes(param.numel()), " bytes for a param of ", param.numel(), " elements, got ",
                 t.scalar_type(), " of ", t.numel());
}

// Read-only lists are read through const_data_ptr, which leaves a lazily
// cloned (copy-on-write) tensor unmaterialized.
template <class Operand>
void* pointer(const Operand& o, const at::Tensor& t) {
  return o.mutated ? t.data_ptr() : const_cast<void*>(t.const_data_ptr());
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

// Below this many tensors a second thread costs more than the misses it
// hides: the host work of a 256-tensor Adam step with its metadata out of
// cache takes about 270 us on one thread (70 us warm), against about 10 us
// to wake a helper (cpu/device_table.cpp).
constexpr int64_t kParallelTensors = 256;

// Calls fn(i) for every i in [0, n), a block at a time after prefetching the
// block's metadata in `lists`. Walking cold metadata waits on memory, and two
// threads wait in parallel: for a CPU step with many tensors the blocks are
// shared with fusedopt's helper threads (cpu/slot_pool.h). The host work of
// another device's step stays on the calling thread: it is small beside the
// step, and the cores belong to the rest of the training process (data
// loader and compile workers). fn must be safe to call concurrently for
// different i.
template <class Lists, class Fn>
void for_each_prefetched(const Lists& lists, size_t n, c10::DeviceType device, Fn&& fn) {
  const auto run = [&](size_t begin, size_t end) {
    for (size_t block = begin; block < end; block += kPrefetchBlock) {
      const size_t block_end = std::min(end, block + kPrefetchBlock);
      prefetch_block(lists, block, block_end);
      for (size_t i = block; i < block_end; ++i) fn(i);
    }
  };
  const int64_t blocks = (static_cast<int64_t>(n) + kPrefetchBlock - 1) / kPrefetchBlock;
  const int threads = cpu::host_threads();
  if (device != c10::DeviceType::CPU || static_cast<int64_t>(n) < kParallelTensors || threads < 2 ||
      blocks > cpu::kMaxSlots) {
    run(0, n);
    return;
  }
  auto block = [&](int64_t b) {
    const size_t begin = static_cast<size_t>(b) * kPrefetchBlock;
    run(begin, std::min(n, begin + kPrefetchBlock));
  };
  cpu::run_slots(blocks, threads - 1, block);
}

}  // namespace

PreparedLists::PreparedLists(const char* op, c10::DeviceType device, at::TensorList params,
                             at::TensorList grads, std::initializer_list<NamedList> states,
                             at::TensorList reg_grads, bool grads_mutable, const ListDtypes& dtypes) {
  const size_t n = params.size();
  FUSEDOPT_CHECK(grads.size() == n, "fusedopt.", op, ": got ", n, " params but ", grads.size(), " grads");
  operands_.push_back({"params", params, std::nullopt, true});
  operands_.push_back({"grads", grads, dtypes.grads, grads_mutable});
  if (!reg_grads.empty()) {
    FUSEDOPT_CHECK(reg_grads.size() == n, "fusedopt.", op, ": got ", n, " params but ", reg_grads.size(),
                   " regularization gradients");
    operands_.push_back({"reg_grads", reg_grads, dtypes.grads, false});
    has_reg_ = true;
  }
  const size_t first_state = operands_.size();
  std::vector<NamedList> lists(states);
  if (dtypes.companion.used) lists.push_back(dtypes.companion);
  for (const NamedList& s : lists) {
    if (!s.used) continue;
    FUSEDOPT_CHECK(s.tensors.size() == n, "fusedopt.", op, ": got ", n, " params but ", s.tensors.size(), " ",
                   s.name, s.tensors.empty() ? " (the options given need this state)" : "");
    const bool companion = &s == &lists.back() && dtypes.companion.used;
    const std::optional<at::ScalarType> dtype = companion ? dtypes.companion_dtype : dtypes.states;
    operands_.push_back({s.name, s.tensors, dtype, true, !companion && dtype == at::kByte});
  }
  const size_t state_end = operands_.size() - (dtypes.companion.used ? 1 : 0);
  FUSEDOPT_CHECK(state_end - first_state + 1 <= cpu::kMaxStates, "fusedopt.", op, ": too many state lists");

  lists_.count = static_cast<int64_t>(n);
  device_ = device;
  if (n > 0 && params[0].defined()) first_dtype_ = params[0].dtype();
  offset_.assign(n + 1, 0);
  for (size_t k = 0; k < operands_.size(); ++k) pointers_[k].resize(n);

  std::vector<at::TensorList> all;
  for (const Operand& o : operands_) all.push_back(o.tensors);
  // The common case, tensor by tensor and independently; the numel of
  // tensor i goes to offset_[i + 1] until the prefix sum below. The rest is
  // left to the serial pass, which raises errors in index order.
  std::vector<uint8_t> slow(n, 0);
  for_each_prefetched(all, n, device, [&](size_t i) {
    if (!dense(i)) {
      slow[i] = 1;
      return;
    }
    for (size_t k = 0; k < operands_.size(); ++k) pointers_[k][i] = pointer(operands_[k], operands_[k].tensors[i]);
    offset_[i + 1] = params[i].numel();
  });
  if (n > 0 && !slow[0]) lists_.dtype = kernel_dtype(op, dtypes.grads.value_or(params[0].scalar_type()));
  for (size_t i = 0; i < n; ++i) {
    if (slow[i]) prepare_slowly(op, device, i);
    offset_[i + 1] += offset_[i];
  }

  lists_.offset = offset_.data();
  lists_.grads = pointers_[1].data();
  if (has_reg_) lists_.reg_grads = pointers_[2].data();
  lists_.states[0] = pointers_[0].data();
  for (size_t k = first_state; k < state_end; ++k) lists_.states[k - first_state + 1] = pointers_[k].data();
  if (dtypes.companion.used) lists_.storage.companions = pointers_[operands_.size() - 1].data();
  const std::optional<at::ScalarType> state_type = dtypes.states;
  lists_.storage.state_dtype = state_type == at::kByte ? cpu::Dtype::kQuant8
                               : n > 0 ? kernel_dtype(op, state_type.value_or(params[0].scalar_type()))
                                       : lists_.dtype;
  if (lists_.storage.state_dtype == cpu::Dtype::kQuant8) lists_.align = math::kQuantBlock;
}

// The common case, tested cheaply: a dense float param of the expected
// device and of params[0]'s dtype, with every operand of its list's dtype,
// the param's device, shape and strides (so no operand overlaps itself
// either), each in a storage of its own (so no two operands overlap).
bool PreparedLists::dense(size_t i) const {
  const at::Tensor& param = operands_[0].tensors[i];
  if (!param.defined()) return false;
  const c10::TensorImpl* p = param.unsafeGetTensorImpl();
  if (p->layout() != at::kStrided || p->device_type() != device_ || !p->is_non_overlapping_and_dense()) {
    return false;
  }
  const caffe2::TypeMeta dtype = p->dtype();
  if (i > 0 ? dtype != first_dtype_ : !at::isFloatingType(dtype.toScalarType())) return false;
  const c10::IntArrayRef sizes = p->sizes(), strides = p->strides();
  c10::StorageImpl* storages[kMaxOperands];
  storages[0] = storage_of(p);
  for (size_t k = 1; k < operands_.size(); ++k) {
    const at::Tensor& tensor = operands_[k].tensors[i];
    if (!tensor.defined()) return false;
    const c10::TensorImpl* t = tensor.unsafeGetTensorImpl();
    if (operands_[k].packed) {
      if (t->layout() != at::kStrided || t->dtype() != caffe2::TypeMeta::Make<uint8_t>() ||
          t->device() != p->device() || !t->is_contiguous() || t->numel() != packed_bytes(p->numel())) {
        return false;
      }
      c10::StorageImpl* storage = storage_of(t);
      for (size_t j = 0; j < k; ++j) {
        if (storages[j] == storage) return false;
      }
      storages[k] = storage;
      continue;
    }
    const caffe2::TypeMeta expected =
        operands_[k].dtype.has_value() ? caffe2::TypeMeta::fromScalarType(*operands_[k].dtype) : dtype;
    if (t->layout() != at::kStrided || t->dtype() != expected || t->device() != p->device() ||
        t->dim() != p->dim()) {
      return false;
    }
    c10::StorageImpl* storage = storage_of(t);
    for (size_t j = 0; j < k; ++j) {
      if (storages[j] == storage) return false;
    }
    storages[k] = storage;
    const c10::IntArrayRef t_sizes = t->sizes(), t_strides = t->strides();
    for (size_t d = 0; d < sizes.size(); ++d) {
      if (t_sizes[d] != sizes[d] || (sizes[d] > 1 && t_strides[d] != strides[d])) return false;
    }
  }
  return true;
}

// Everything else: the checks that name the problem, then copies for layouts
// the kernel cannot walk as one dense run.
void PreparedLists::prepare_slowly(const char* op, c10::DeviceType device, size_t i) {
  const at::TensorList params = operands_[0].tensors;
  const at::Tensor& param = params[i];
  FUSEDOPT_CHECK(param.defined(), "fusedopt.", op, ": params[", i, "] is undefined");
  FUSEDOPT_CHECK(param.layout() == at::kStrided, "fusedopt.", op, ": params[", i, "] is not strided");
  FUSEDOPT_CHECK(param.device().type() == device, "fusedopt.", op, ": params[", i, "] is on ", param.device(),
                 "; this implementation handles ", c10::DeviceTypeName(device), " tensors");
  kernel_dtype(op, param.scalar_type());  // raises for a param that is no float
  if (i == 0) {
    lists_.dtype = kernel_dtype(op, operands_[1].dtype.value_or(param.scalar_type()));
  } else {
    FUSEDOPT_CHECK(param.scalar_type() == params[0].scalar_type(), "fusedopt.", op, ": params[", i, "] is ",
                   param.scalar_type(), " but params[0] is ", params[0].scalar_type(), "; one call takes one dtype");
  }
  for (size_t k = 0; k < operands_.size(); ++k) {
    const Operand& o = operands_[k];
    if (o.packed) {
      check_packed(op, o.name, i, o.tensors[i], param);
    } else if (k > 0) {
      check_like_param(op, o.name, i, o.tensors[i], param, o.dtype);
    }
    if (o.mutated) check_writable(op, o.name, i, o.tensors[i]);
  }
  // Read-only inputs may share memory with each other (classic's dw and dr),
  // and classic's dr may be its w itself (the seed's L2 term, dr = w: each
  // element is read before it is written); nothing else may share memory.
  const auto same_view = [&](const at::Tensor& t) {
    return t.data_ptr() == param.data_ptr() && t.sizes() == param.sizes() && t.strides() == param.strides();
  };
  const bool reg_is_param = has_reg_ && same_view(operands_[2].tensors[i]);
  for (size_t a = 0; a < operands_.size(); ++a) {
    for (size_t b = a + 1; b < operands_.size(); ++b) {
      if (!operands_[a].mutated && !operands_[b].mutated) continue;
      if (a == 0 && b == 2 && has_reg_ && reg_is_param) continue;
      check_disjoint(op, operands_[a].name, operands_[a].tensors[i], operands_[b].name, operands_[b].tensors[i], i);
    }
  }
  // Not dense with one layout: walk contiguous copies, written back in finish().
  for (size_t k = 0; k < operands_.size(); ++k) {
    const at::Tensor& t = operands_[k].tensors[i];
    if (operands_[k].packed) {  // contiguous, checked above
      pointers_[k][i] = t.data_ptr();
      continue;
    }
    copies_.push_back(t.contiguous());
    if (operands_[k].mutated && !t.is_contiguous()) write_back_.emplace_back(t, copies_.back());
    pointers_[k][i] = pointer(operands_[k], copies_.back());
  }
  offset_[i + 1] = param.numel();
}

void PreparedLists::finish() {
  for (auto& [original, copy] : write_back_) original.copy_(copy);
  write_back_.clear();
}

std::vector<at::Tensor> unflatten(const char* op, const char* name, const std::optional<at::Tensor>& flat,
                                  at::TensorList params, bool scalars) {
  std::vector<at::Tensor> views;
  if (!flat.has_value()) return views;
  const at::Tensor& f = *flat;
  FUSEDOPT_CHECK(f.defined() && f.layout() == at::kStrided && f.dim() == 1 && f.is_contiguous(), "fusedopt.", op,
                 ": ", name, " must be one contiguous 1-d tensor (the flat layout)");
  int64_t total = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    FUSEDOPT_CHECK(params[i].defined() && params[i].is_contiguous(), "fusedopt.", op, ": params[", i,
                   "] must be contiguous beside flat states");
    total += scalars ? 1 : params[i].numel();
  }
  FUSEDOPT_CHECK(f.numel() == total, "fusedopt.", op, ": ", name, " has ", f.numel(), " elements but the ",
                 params.size(), " params need ", total);
  views.reserve(params.size());
  int64_t offset = f.storage_offset();
  for (const at::Tensor& param : params) {
    auto impl = c10::make_intrusive<c10::TensorImpl>(c10::TensorImpl::VIEW, c10::Storage(f.storage()),
                                                     f.key_set(), f.dtype());
    // Not set_sizes_and_strides: its inline checks stream numbers (message.h).
    impl->set_sizes_contiguous(scalars ? c10::IntArrayRef{} : param.sizes());
    impl->set_storage_offset(offset);
    offset += scalars ? 1 : param.numel();
    views.emplace_back(std::move(impl));
  }
  return views;
}

std::vector<double> increment_steps(const char* op, at::TensorList steps, size_t expected, c10::DeviceType device) {
  FUSEDOPT_CHECK(steps.size() == expected, "fusedopt.", op, ": got ", expected, " params but ",
              steps.size(), " state_steps");
  const size_t n = steps.size();
  // Every step is checked before any is counted, so a bad one changes none.
  enum Kind : uint8_t { kBad, kFloat32, kFloat64 };
  std::vector<uint8_t> kind(n, kBad);
  std::vector<void*> data(n, nullptr);
  for_each_prefetched(std::initializer_list<at::TensorList>{steps}, n, device, [&](size_t i) {
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
