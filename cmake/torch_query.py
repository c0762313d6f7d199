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
libstdcxx = ""
try:
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if os.path.basename(path).startswith("libstdc++.so"):
                libstdcxx = path
                break
except OSError:
    pass
print(f"TORCH_LIBSTDCXX={libstdcxx}")
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
