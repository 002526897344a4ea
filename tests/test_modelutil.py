"""robustx.modelutil: progress switch, layer selection (the root module too), the hook
recorder, frozen_eval, the memory probe behind CLEVER's passes and --batch-size auto."""
import pytest
import torch
from torch import nn
from tqdm.auto import tqdm

from robustx.coverage import NeuronCoverage
from robustx.modelutil import LayerOutputs, chunks, frozen_eval, input_bytes, progress_bar, resolve_layers
from robustx.sensitivity import neuron_sensitivity


@pytest.mark.parametrize("value, bar", [(None, True), ("", True), ("0", True), ("1", False), ("yes", False)])
def test_progress_bar_environment_switch(monkeypatch, value, bar):
    if value is None:
        monkeypatch.delenv("ROBUSTX_NO_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("ROBUSTX_NO_PROGRESS", value)
    items = [1, 2, 3]
    got = progress_bar(items, True, "test")
    assert isinstance(got, tqdm) is bar and list(got) == items
    assert progress_bar(items, False, "test") is items


def test_chunks_cover_the_range():
    assert [(s.start, s.stop) for s in chunks(7, 3)] == [(0, 3), (3, 6), (6, 7)]


def test_resolve_layers_selects_a_bare_root_module():
    fc = nn.Linear(3, 2)
    assert resolve_layers(fc) == {"": fc}
    assert resolve_layers(fc, "") == {"": fc}
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    assert list(resolve_layers(seq)) == ["0", "3"]
    assert list(resolve_layers(seq, nn.Sequential)) == [""]
    assert list(resolve_layers(seq, ["3", nn.ReLU])) == ["1", "3"]  # model order
    with pytest.raises(ValueError, match="no module named 'x'.*'0'"):
        resolve_layers(seq, "x")
    with pytest.raises(ValueError, match="selects no module"):
        resolve_layers(seq, nn.GRU)
    with pytest.raises(TypeError, match="layers must hold"):
        resolve_layers(seq, [3])
    with pytest.raises(TypeError, match="model"):
        resolve_layers("seq")


def test_bare_linear_model_works_in_both_metrics():
    fc = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
    x, x_adv = torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # per-pair unit distances (1, 0, 1) and (0, 2, 1)
    sens = neuron_sensitivity(fc, x, x_adv, progress=False)
    torch.testing.assert_close(sens[""], torch.tensor([0.5, 1.0, 1.0], dtype=torch.float64))
    r = NeuronCoverage(fc, top_k=1, progress=False).profile(x_adv).assess(x_adv)
    # units 0, 1 hit their lowest and highest of 10 sections; unit 2 is constant (1, 1): one section
    assert r.neurons == 3 and r.KMNC == pytest.approx(5 / 30)


def test_layer_outputs_records_last_call_or_hands_over_every_call():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(2, 2), relu, nn.Linear(2, 2), relu)
    x = torch.tensor([[1.0, -1.0]])
    with LayerOutputs({"1": relu}) as rec:
        model(x)
        assert rec.calls == {"1": 2}
        with torch.no_grad():
            torch.testing.assert_close(rec.get("1"), model(x))  # the last call
        rec.clear()
        assert rec.calls == {} and rec.outputs == {}
    seen = []
    with LayerOutputs({"1": relu}, consume=lambda n, c, i, o: seen.append((n, c, i[0].shape, o.shape))) as rec:
        model(x)
    assert seen == [("1", 0, (1, 2), (1, 2)), ("1", 1, (1, 2), (1, 2))] and rec.outputs == {}
    assert not relu._forward_hooks


def test_layer_outputs_refuses_in_place_changed_and_non_tensor_outputs():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(inplace=True))
    with LayerOutputs({"0": model[0]}) as rec:
        model(torch.randn(3, 2))
        with pytest.raises(ValueError, match="'0' is modified in place"):
            rec.get("0")
    lstm = nn.LSTM(2, 2)
    with pytest.raises(TypeError, match="'lstm' returned tuple"):
        with LayerOutputs({"lstm": lstm}):
            lstm(torch.randn(1, 1, 2))


def test_frozen_eval_restores_mode_and_flags():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    model[0].bias.requires_grad_(False)
    with frozen_eval(model):
        assert not model.training and not model[1].training
        assert not any(p.requires_grad for p in model.parameters())
    assert model.training and model[0].weight.requires_grad and not model[0].bias.requires_grad
    with pytest.raises(TypeError, match="model"):
        with frozen_eval(object()):
            pass


def test_one_memory_probe_sizes_clever_passes_and_auto_batch_size(monkeypatch):
    """A frozen MLP Linear(48, h) - ReLU - Linear(h, k) keeps, per input, the ReLU output
    (saved by the ReLU and by the second Linear: one storage, counted once) and the logits:
    4 (h + k) float32 bytes; the weights cost the same for any batch. Both users of the
    probe size from exactly that number."""
    import importlib

    from robustx.pipeline.batchsize import auto_batch_size

    h, k, d = 7, 5, 48
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k))
    x = torch.rand(1, 3, 4, 4)
    per_input = 4 * (h + k)
    assert input_bytes(model, x) == per_input
    # --batch-size auto: the largest power of two of inputs within the budget
    assert [auto_batch_size(model, x, budget=per_input * b) for b in (1, 5, 8, 9)] == [1, 4, 8, 8]
    # CLEVER: points per pass = half its pass budget over that number plus the point and its copy
    clever_module = importlib.import_module("robustx.clever")
    for rows in (1, 3, 10):
        monkeypatch.setattr(clever_module, "CPU_CHUNK_BYTES", 2 * rows * (per_input + 2 * d * 4))
        assert clever_module._auto_chunk(model, x) == rows
