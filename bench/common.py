"""Shared pieces of the op benchmarks: the shapes of the real models, the providers, byte and
FLOP counts, CUDA-event timing and the measured copy-bandwidth ceiling.

Every benchmark stores its numbers in ``benchmark.extra_info``: median ms (CUDA events or
triton's do_bench on GPU, pytest-benchmark's wall clock on CPU), GB/s, TFLOP/s, % of the copy
bandwidth measured in the same run, and the peak memory of one call.

On CUDA there are two times. ``median_ms`` launches from Python call after call: when an op's
kernels are shorter than its host path (these ops at SD3 sizes, any backward through the
autograd engine) the GPU waits on the host and this is the host's time. ``gpu_ms`` replays the
calls from a CUDA graph, so the host is out of the loop: the device time, which is what the op
costs inside a training or sampling step that keeps the GPU busy. GB/s and % of the copy
bandwidth are given for both (``gpu_gbs``, ``gpu_pct_copy_bw``).
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass

import torch

CUDA = torch.cuda.is_available()


@dataclass(frozen=True)
class Shape:
    name: str
    B: int
    C: int
    D: int
    H: int
    W: int
    p: int
    hidden: int

    @property
    def T(self) -> int:
        return (self.H // self.p) * (self.W // self.p)

    @property
    def K(self) -> int:
        return (self.C + self.D) * self.p * self.p

    @property
    def M(self) -> int:
        return self.B * self.T


# SD3.5-M + DA-VAE at 1024 px and 2048 px (f16c32p2), ImageNet 512 (f32c128p1, LightningDiT-XL/1).
CUDA_SHAPES = [
    Shape("sd3-1024", 4, 16, 16, 64, 64, 2, 1536),
    Shape("sd3-2048", 4, 16, 16, 128, 128, 2, 1536),
    Shape("imagenet-512", 32, 32, 96, 16, 16, 1, 1152),
]
# On a 2-core CPU: batch 1 (4 for ImageNet) so the whole suite stays within a few minutes.
CPU_SHAPES = [
    Shape("sd3-1024", 1, 16, 16, 64, 64, 2, 1536),
    Shape("sd3-2048", 1, 16, 16, 128, 128, 2, 1536),
    Shape("imagenet-512", 4, 32, 96, 16, 16, 1, 1152),
]


def devices_and_shapes():
    """(device, dtype, shape) cases: float32 on CPU, bfloat16 on CUDA when present."""
    cases = [("cpu", torch.float32, s) for s in CPU_SHAPES]
    if CUDA:
        cases += [("cuda", torch.bfloat16, s) for s in CUDA_SHAPES]
    return cases


def case_id(case) -> str:
    device, dtype, shape = case
    return f"{device}-{str(dtype).replace('torch.', '')}-{shape.name}"


@functools.lru_cache(maxsize=None)
def copy_bandwidth_gbs() -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), measured now."""
    if not CUDA:
        return float("nan")
    n = 512 * 1024 * 1024  # 1 GiB of bytes
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_median_ms(lambda: dst.copy_(src), flush_l2=False)
    return 2 * n / (ms * 1e-3) / 1e9


@functools.lru_cache(maxsize=None)
def l2_flush_buffer() -> torch.Tensor:
    """256 MiB to zero before a timed call, so no operand is still in L2 (H100: 50 MiB)."""
    return torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")


def cuda_median_ms(fn, warmup: int = 10, reps: int = 50, flush_l2: bool = True) -> float:
    """Median time of fn() on the GPU, with CUDA events; L2 flushed before each rep."""
    try:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    except Exception:  # no triton, or an old one: hand-rolled events
        pass
    flush = l2_flush_buffer() if flush_l2 else None
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if flush is not None:
            flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cuda_graph_ms(fn, reps: int = 20, flush_l2: bool = True):
    """Device time of one fn() call with the host out of the loop: `reps` calls, each after an
    L2 flush, captured in one CUDA graph and replayed under CUDA events; a graph of the flushes
    alone is timed the same way and subtracted. Returns (ms, None), or (None, reason) when fn
    cannot be captured (a host synchronisation, a CPU tensor, ...)."""
    flush = l2_flush_buffer() if flush_l2 else None

    def body():
        if flush is not None:
            flush.zero_()
        fn()

    # Warm up on a side stream, as capture requires (cuBLAS handles and workspaces, autotuning).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    def capture(step):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                step()
        return graph

    def replay_ms(graph) -> float:
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(7):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    try:
        work = capture(body)
        flushes = capture(flush.zero_) if flush is not None else None
    except Exception as exc:  # not capturable: report why, keep the event timing
        torch.cuda.synchronize()
        return None, f"{type(exc).__name__}: {exc}"[:300]
    total = replay_ms(work) - (replay_ms(flushes) if flushes is not None else 0.0)
    del work, flushes
    return max(total, 0.0) / reps, None


def interleaved_medians(fns: dict, rounds: int = 15, warmup: int = 2) -> dict:
    """Median ms per call of each function, timed in alternating order round after round (forward,
    then reversed), so that a drift in the machine's speed hits every function alike: the ratios
    of a noisy 2-core machine, where back-to-back runs of one function after another differ by
    more than the effects measured."""
    import time

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    items = list(fns.items())
    for r in range(rounds):
        for name, fn in items if r % 2 == 0 else items[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def cuda_peak_bytes(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def cpu_peak_bytes(fn) -> int:
    """Peak of the CPU memory allocated during one fn() call, from the profiler's memory events:
    the running sum, in start-time order, of each event's own (self) allocations minus frees.
    Op-granular: an allocation freed inside the same op does not count toward the peak."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def record(benchmark, device, fn, nbytes: int, flops: int, run_wall_clock, graph_pair=None):
    """Time `fn` and put the numbers into benchmark.extra_info.

    On CUDA the median comes from CUDA events; pytest-benchmark's own table times a synchronized
    call. On CPU pytest-benchmark's wall-clock median is the number.
    graph_pair = (with_fn, without_fn): the device time is that of with_fn minus that of
    without_fn, both replayed from CUDA graphs, for an fn that cannot be captured by itself.
    """
    info = benchmark.extra_info
    info["bytes"] = nbytes
    info["flops"] = flops
    if device == "cuda":
        ms = cuda_median_ms(fn)
        info["median_ms"] = ms
        info["gbs"] = nbytes / (ms * 1e-3) / 1e9
        info["tflops"] = flops / (ms * 1e-3) / 1e12
        info["copy_bw_gbs"] = copy_bandwidth_gbs()
        info["pct_copy_bw"] = 100.0 * info["gbs"] / info["copy_bw_gbs"]
        if graph_pair is None:
            gpu_ms, why_not = cuda_graph_ms(fn)
        else:
            (with_ms, why_with), (without_ms, why_without) = (cuda_graph_ms(f) for f in graph_pair)
            if with_ms and without_ms and with_ms > without_ms:
                gpu_ms, why_not = with_ms - without_ms, None
            else:
                gpu_ms = None
                why_not = why_with or why_without or f"difference not positive: {with_ms} - {without_ms} ms"
            info["gpu_ms_method"] = "difference of two CUDA graphs"
        info["gpu_ms"] = gpu_ms
        if gpu_ms:
            info["gpu_gbs"] = nbytes / (gpu_ms * 1e-3) / 1e9
            info["gpu_tflops"] = flops / (gpu_ms * 1e-3) / 1e12
            info["gpu_pct_copy_bw"] = 100.0 * info["gpu_gbs"] / info["copy_bw_gbs"]
        else:
            info["gpu_ms_error"] = why_not
        info["peak_bytes"] = cuda_peak_bytes(fn)

        def synced():
            fn()
            torch.cuda.synchronize()

        run_wall_clock(synced)
    else:
        run_wall_clock(fn)
        benchmark.davae_timed_fn = fn  # bench/conftest.py re-times the group's providers interleaved
        ms = benchmark.stats.stats.median * 1e3
        info["median_ms"] = ms
        info["gbs"] = nbytes / (ms * 1e-3) / 1e9
        info["tflops"] = flops / (ms * 1e-3) / 1e12
        info["peak_bytes"] = cpu_peak_bytes(fn)


DIRECTIONS = ["fwd", "bwd", "fwdbwd"]
ROUNDS = {"cpu": 20, "cuda": 20}


@functools.lru_cache(maxsize=None)
def compiled(fn):
    """torch.compile(fn), made once per function (the compile happens in the warm-up rounds)."""
    return torch.compile(fn, dynamic=False)


def time_direction(benchmark, device, forward, tensors, direction, nbytes, flops):
    """Benchmark `forward(*tensors)` in one direction.

    fwd: forward under no_grad. bwd: the backward of one retained forward graph (gradients
    w.r.t. every tensor that requires grad, no accumulation). fwdbwd: both.
    """
    leaves = [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]
    graph_pair = None
    if direction == "fwd":
        def fn():
            with torch.no_grad():
                return forward(*tensors)
    else:
        out = forward(*tensors)
        grad_out = torch.randn_like(out)

        def fwdbwd():
            return torch.autograd.grad(forward(*tensors), leaves, grad_out)

        if direction == "bwd":
            def fn():
                return torch.autograd.grad(out, leaves, grad_out, retain_graph=True)

            # A backward runs on the stream of its forward, here the default stream, which is
            # outside any capture: it cannot be captured alone. Its device time is forward +
            # backward minus the forward (with grad), each captured whole.
            graph_pair = (fwdbwd, lambda: forward(*tensors))
        else:
            fn = fwdbwd

    def wall_clock(target):
        benchmark.pedantic(target, rounds=ROUNDS[device], warmup_rounds=3, iterations=1)

    benchmark.extra_info["direction"] = direction
    benchmark.extra_info["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    record(benchmark, device, fn, nbytes, flops, wall_clock, graph_pair)


def time_sampling(benchmark, device: str, run, steps: int, provider: str, results: dict, info: dict) -> float:
    """Time ``run(steps)`` (a pipeline call) after a one-step warm-up, once on CUDA, twice on the
    CPU; record ``info`` and, once both providers of the group have run, ``native_over_davae`` (the
    native pipeline's time over the DA-VAE one's) in extra_info, and print them. The seconds."""
    def call(n):
        with torch.inference_mode():
            run(n)
        if device == "cuda":
            torch.cuda.synchronize()

    call(1)
    benchmark.pedantic(call, args=(steps,), rounds=1 if device == "cuda" else 2, iterations=1)
    seconds = benchmark.stats.stats.median
    results[(benchmark.group, provider)] = seconds
    other = results.get((benchmark.group, "native" if provider == "davae" else "davae"))
    if other is not None:
        info["native_over_davae"] = (seconds / other) if provider == "native" else (other / seconds)
    benchmark.extra_info.update(info)
    print(f"\n{benchmark.group} {provider}: {seconds:.3f} s, {info}")
    return seconds


def cached_builds(build):
    """The body of a module-scoped fixture: yields ``get(*key)``, which calls ``build(*key)`` once
    per key and keeps the result; afterwards the results are dropped (and CUDA's cache emptied)."""
    cache = {}

    def get(*key):
        if key not in cache:
            cache[key] = build(*key)
        return cache[key]

    yield get
    cache.clear()
    if CUDA:
        torch.cuda.empty_cache()


def random_models(device: str, transformer_cls, cfg: dict, vae_cfg: dict):
    """Random weights (seed 0), bfloat16 on CUDA and float32 on the CPU, eval mode: the transformer
    ``transformer_cls(**cfg)``, an ``AutoencoderKL(**vae_cfg)`` and the DA-VAE on that VAE (16
    detail channels, unit detail statistics). Returns (transformer, vae, davae, dtype)."""
    from diffusers import AutoencoderKL

    from davae_ext.models.davae import DAVAE

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        transformer = transformer_cls(**cfg).to(dtype).eval()
        vae = AutoencoderKL(**vae_cfg).to(dtype).eval()
    davae = DAVAE.from_base_vae(vae).eval()
    davae.set_latent_stats([0.0] * 16, [1.0] * 16)
    return transformer, vae, davae, dtype
