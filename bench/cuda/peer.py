"""peer.py: the PyTorch peers of bench_cuda.c, measured in the same `make bench-cuda` run on the same GPU.
SDPA (FlashAttention-2 and cuDNN backends) at the prefill-attention shapes, SDPA decode with GQA, and the
device copy bandwidth. CUDA-event timings, medians after warm-up."""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def bench(fn, reps=10, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e-3)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    dev = torch.device("cuda")
    print(f"peer: PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=dev).fill_(1)
    b = torch.empty_like(a)
    t = bench(lambda: b.copy_(a))
    print(f"peer: device copy (read + write) {2 * n / t / 1e12:.2f} TB/s")
    del a, b
    S = 16384
    for H, D in ((16, 128), (32, 64)):
        q, k, v = (torch.randn(1, H, S, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * H * S * S * D / 2
        for name, be in (("FA2", SDPBackend.FLASH_ATTENTION), ("cuDNN", SDPBackend.CUDNN_ATTENTION)):
            try:
                with sdpa_kernel(be):
                    t = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
                print(f"peer: SDPA {name} prefill causal S {S} H {H} D {D}: {t * 1e3:.3f} ms = "
                      f"{flops / t / 1e12:.1f} TFLOP/s")
            except Exception as e:  # a backend missing on this build
                print(f"peer: SDPA {name} unavailable: {str(e)[:100]}")
    for KV in (32768, 131072):
        q = torch.randn(1, 32, 1, 128, device=dev, dtype=torch.bfloat16)
        k, v = (torch.randn(1, 8, KV, 128, device=dev, dtype=torch.bfloat16) for _ in range(2))
        t = bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), reps=50)
        by = 2 * KV * 8 * 128 * 2
        print(f"peer: SDPA decode 1 query GQA 32/8 D 128 KV {KV}: {t * 1e6:.1f} us = {by / t / 1e12:.2f} TB/s")


if __name__ == "__main__":
    main()
