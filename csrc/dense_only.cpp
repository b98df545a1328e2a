// Sparse inputs to any hanet_fast op: a TypeError naming the argument, worded as
// hanet_fast/ops/_validate.py words it, instead of the dispatcher's "could not run ... with
// arguments from the 'SparseCPU' backend". One boxed kernel serves every op's schema.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

namespace hanet_fast {
namespace {

void refuse_sparse(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const auto inputs = torch::jit::last(*stack, arguments.size());
  for (size_t i = 0; i < arguments.size(); ++i) {
    if (inputs[i].isTensor() && inputs[i].toTensor().layout() != at::kStrided) {
      const std::string& name = arguments[i].name();
      TORCH_CHECK_TYPE(false, "hanet_fast: ", name, " must be a dense (strided) tensor, got layout ",
                       inputs[i].toTensor().layout(), "; convert it with ", name, ".to_dense()");
    }
  }
  TORCH_CHECK_TYPE(false, "hanet_fast: ", op.schema().name(), " takes dense (strided) tensors only");
}

void register_refusals(torch::Library& m) {
  for (const char* name : {"height_pool_avg", "height_pool_avg_backward", "height_pool_max",
                           "height_pool_max_backward", "height_gate", "height_gate_backward",
                           "height_gate_attn_backward"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&refuse_sparse>());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(hanet_fast, SparseCPU, m) { register_refusals(m); }
TORCH_LIBRARY_IMPL(hanet_fast, SparseCUDA, m) { register_refusals(m); }
TORCH_LIBRARY_IMPL(hanet_fast, SparseCsrCPU, m) { register_refusals(m); }
TORCH_LIBRARY_IMPL(hanet_fast, SparseCsrCUDA, m) { register_refusals(m); }

}  // namespace hanet_fast
