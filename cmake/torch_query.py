"""Print the facts about the build interpreter's torch that CMakeLists.txt needs, one KEY=VALUE a line."""
import os

import torch

root = os.path.dirname(torch.__file__)
print(f"TORCH_ROOT={root}")
print(f"TORCH_VERSION={torch.__version__}")
print(f"TORCH_CUDA={torch.version.cuda or ''}")
print(f"TORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
# CUDA library headers that torch's CUDA headers include (cusparse.h, cublas_v2.h, ...) ship with
# the nvidia-* pip packages, not always with the system toolkit.
site = os.path.dirname(root)
includes = []
nvidia = os.path.join(site, "nvidia")
if os.path.isdir(nvidia):
    for name in sorted(os.listdir(nvidia)):
        inc = os.path.join(nvidia, name, "include")
        if os.path.isdir(inc):
            includes.append(inc)
print("TORCH_NVIDIA_INCLUDES=" + "|".join(includes))
# The libstdc++ this process (and so torch) runs with: the extension must use that same shared
# library rather than carry a static copy (two copies of the locale machinery crash when a check
# formats a number into an error message).
def loaded_library(prefix: str) -> str:
    """The path of the first shared library this process has mapped whose name starts with prefix."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if os.path.basename(path).startswith(prefix):
                    return path
    except OSError:
        pass
    return ""


print(f"TORCH_LIBSTDCXX={loaded_library('libstdc++.so')}")
# ATen's parallel_for is an inline template: its OpenMP pragmas are compiled into the extension,
# which needs -fopenmp for them (else every CPU kernel runs on one thread) and torch's own OpenMP
# runtime (torch/lib/libgomp.so.1 in the pip wheels), never a second one.
print(f"TORCH_OPENMP={int(torch._C.has_openmp and 'parallel backend: OpenMP' in torch.__config__.parallel_info())}")
print(f"TORCH_LIBGOMP={loaded_library('libgomp')}")
# cuBLASLt (the patch-embed forward calls it directly): the library torch's CUDA build ships with.
cublaslt = ""
for folder in [os.path.join(nvidia, n, "lib") for n in (sorted(os.listdir(nvidia)) if os.path.isdir(nvidia) else [])] + [
        os.path.join(root, "lib")]:
    if os.path.isdir(folder):
        found = sorted(f for f in os.listdir(folder) if f.startswith("libcublasLt.so"))
        if found:
            cublaslt = os.path.join(folder, found[0])
            break
print(f"TORCH_CUBLASLT={cublaslt}")
