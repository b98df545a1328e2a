// Makes the op library importable as the Python module hanet_fast._C; importing it runs
// the TORCH_LIBRARY registrations. Only setup.py builds this file: the CMake build
// produces a plain library for torch.ops.load_library.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
