"""benchmarks/cuda_estimate.py: CUDA memory and traffic counted on fake CUDA tensors, on a CPU."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from mattecli.models.layers import BNAct, fold_batchnorm

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "cuda_estimate.py"
spec = importlib.util.spec_from_file_location("cuda_estimate", SCRIPT)
cuda_estimate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cuda_estimate)


def test_counts_live_bytes_and_traffic_of_a_small_network():
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1)).eval()
    live = cuda_estimate.run_fake(net, (1, 4, 10, 12))
    pixels = 10 * 12
    # the first conv's output and the ReLU's output are both alive while the ReLU runs
    assert live.peak == 2 * 8 * pixels * 4
    assert live.at_peak == "relu"
    assert live.bytes == 0  # everything made in the pass was freed
    conv1 = 4 * pixels * 4 + (8 * 4 * 9 + 8) * 4 + 8 * pixels * 4  # input, weight and bias, output
    relu = 2 * 8 * pixels * 4
    conv2 = 8 * pixels * 4 + (8 * 9 + 1) * 4 + pixels * 4
    assert {op: n for op, n in live.traffic.items() if n} == {"conv2d": conv1 + conv2, "relu": relu}
    assert live.calls == {"conv2d": 2, "relu": 1, "to": 1}  # .float() of a float32 output: no copy
    # float16 autocast: the same tensors at two bytes (the casts of input and weights are gone by then)
    assert cuda_estimate.run_fake(net, (1, 4, 10, 12), half=True).peak == 8 * pixels * 2 * 2


def test_views_move_nothing_and_share_their_storage():
    class Slicer(nn.Module):
        def forward(self, x):
            return x[:, :, 2:, ::2] + 1

    live = cuda_estimate.run_fake(Slicer(), (1, 2, 8, 8))
    assert live.peak == 2 * 6 * 4 * 4  # the sum; the slice is a view of the input
    assert live.traffic["slice"] == 0 and live.traffic["add"] == 2 * (2 * 6 * 4 * 4)


@pytest.mark.parametrize("folded", [False, True])
def test_folded_batchnorm_and_in_place_activation_keep_one_map_alive(folded):
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), BNAct(16, "relu")).eval()
    if folded:
        assert fold_batchnorm(net) == 1
    live = cuda_estimate.run_fake(net, (1, 3, 20, 20))
    one_map = 16 * 20 * 20 * 4
    assert live.peak == (1 if folded else 2) * one_map  # the activation writes over what it is given
    assert live.calls["relu_"] == 1 and "batch_norm" not in live.calls if folded else live.calls["batch_norm"] == 1


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")  # torch 2.13 deprecates tracing
def test_a2u_taps_accumulate_in_place_when_run_and_as_mul_add_when_traced():
    from mattecli.models.a2u import downsample_shift, upsample_shift

    m, kernels = torch.randn(1, 8, 9, 11), torch.softmax(torch.randn(1, 9, 18, 22), 1)

    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("kernels", kernels)

        def forward(self, m):
            return upsample_shift(m, self.kernels, 3)

    live = cuda_estimate.run_fake(Up(), (1, 8, 9, 11))
    assert live.calls["addcmul_"] == 8 and live.calls["mul"] == 1 and "add" not in live.calls
    traced = torch.jit.trace(Up(), m)
    kinds = [node.kind() for node in traced.graph.nodes()]
    # one Mul and one Add per tap (plus a Mul of the reshape's shape arithmetic), no addcmul
    assert kinds.count("aten::mul") == 10 and kinds.count("aten::add") == 8 and "aten::addcmul_" not in kinds
    torch.testing.assert_close(traced(m), Up()(m), atol=1e-6, rtol=0)
    down = torch.softmax(torch.randn(1, 36, 5, 6), 1)
    plain = sum(w * k for w, k in zip(
        [torch.nn.functional.pad(m, (2, 3, 2, 3))[..., dy::2, dx::2][..., :5, :6] for dy in range(6) for dx in range(6)],
        down.split(1, dim=1)))
    torch.testing.assert_close(downsample_shift(m, down, 3), plain, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["indexnet-m2o-nl-ctx", "a2u-dynamic-cs-d-gn", "tcp"])
def test_estimates_each_released_recipe(name):
    # large enough that activations, not autocast's float16 copies of the weights, make the peak
    fp32 = cuda_estimate.estimate(name, 640, 480, "fp32")
    fp16 = cuda_estimate.estimate(name, 640, 480, "fp16")
    unfolded = cuda_estimate.estimate(name, 640, 480, "fp16-unfolded")
    assert fp32["input"].endswith("x480x640")
    assert 0 < fp16["bytes_per_pixel"] < fp32["bytes_per_pixel"]
    assert fp16["traffic_gb"] < unfolded["traffic_gb"]  # folding removes a pass over memory per BatchNorm
    assert not any(op["op"] == "batch_norm" for op in fp16["by_operator"])
    assert any(op["op"] == "batch_norm" for op in unfolded["by_operator"])


def test_replay_in_float32_is_the_cpu_model_bit_for_bit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), BNAct(8, "leaky_relu"), nn.Conv2d(8, 2, 1)).eval()
    x = torch.randn(1, 4, 12, 10)
    with torch.inference_mode():
        assert torch.equal(cuda_estimate.replay(net, x), net(x))


def test_replay_in_half_takes_cuda_autocasts_dtypes():
    """A convolution in float16 (autocast's lower-precision list), the softmax after it in float32
    (autocast's float32 list): what a CPU run under CPU autocast would not do."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return torch.softmax(self.conv(x), 1)

    x = torch.randn(1, 4, 9, 7)
    with torch.inference_mode():
        y16 = nn.functional.conv2d(x.half(), conv.weight.half(), conv.bias.half(), padding=1)
        want = torch.softmax(y16.float(), 1)
        got = cuda_estimate.replay(Net().eval(), x, half=True)
        assert got.dtype == torch.float32 and torch.equal(got, want)
        assert not torch.equal(got, Net().eval()(x))  # float16 rounding shows


def test_tcp_runs_its_textural_path_whole_on_cuda():
    """tcp_tile bounds CPU memory; on CUDA the path runs whole (one pass of its convolutions)."""
    from mattecli.models import build_model
    from mattecli.recipes import load_recipe

    calls = {}
    for tile in (0, 128):
        model = build_model(load_recipe("tcp", [f"model.tcp_tile={tile}"])).eval()
        calls[tile] = cuda_estimate.run_fake(model, (1, 6, 320, 480), half=True).calls["conv2d"]
    assert calls[128] == calls[0]
    cpu = build_model(load_recipe("tcp", ["model.tcp_tile=128"])).eval()
    seen = []
    cpu.textural.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[2:]))
    with torch.inference_mode():
        cpu(torch.randn(1, 6, 320, 480))
    assert len(seen) == 3 * 4 and max(s[0] for s in seen) < 320  # tiles on a CPU
