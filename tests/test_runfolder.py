"""The run folder's one writer and one applier of the base delta (fedmom_cli/runfolder.py)."""

from __future__ import annotations

import pytest
import torch

from fedmom_cli import runfolder
from fedmom_cli.errors import UserError


class Plain(torch.nn.Module):  # a base model without LoRA: PEFT names are base_model.model.<name>
    def __init__(self, dtype=torch.float32) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 2, bias=False, dtype=dtype)


def test_write_then_read_gives_the_weight_keys_and_the_values(tmp_path):
    deltas = {"base_model.model.proj": torch.randn(2, 3), "base_model.model.other": torch.randn(4, 1).T}
    runfolder.write_base_delta(tmp_path, deltas)
    back = runfolder.read_base_delta(tmp_path)
    assert sorted(back) == ["base_model.model.other.weight", "base_model.model.proj.weight"]
    for m, d in deltas.items():
        assert torch.equal(back[m + ".weight"], d)
    assert sorted(p.name for p in tmp_path.iterdir()) == [runfolder.BASE_DELTA]  # no temporary left


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_adds_in_float32_and_rounds_once(tmp_path, dtype):
    torch.manual_seed(0)
    model = Plain(dtype)
    w0 = model.proj.weight.detach().double().clone()
    d = torch.randn(2, 3) * 1e-2
    runfolder.write_base_delta(tmp_path, {"base_model.model.proj": d})
    assert runfolder.apply_base_delta(model, runfolder.read_base_delta(tmp_path), separate=False) == 1
    expected = (w0 + d.double()).to(dtype)  # the exact sum, rounded once to the weight's dtype
    assert torch.equal(model.proj.weight.detach(), expected)


def test_apply_in_bf16_keeps_the_delta_on_a_float32_side_path(tmp_path):
    """The default below float32: the weight stays, the layer's output is x (W0 + D)^T rounded once."""
    torch.manual_seed(0)
    model = Plain(torch.bfloat16)
    w0 = model.proj.weight.detach().clone()
    d = torch.randn(2, 3) * 1e-2
    runfolder.write_base_delta(tmp_path, {"base_model.model.proj": d})
    assert runfolder.apply_base_delta(model, runfolder.read_base_delta(tmp_path)) == 1
    assert torch.equal(model.proj.weight.detach(), w0)
    x = torch.randn(5, 3).to(torch.bfloat16)
    with torch.no_grad():
        y = model.proj(x)
    expected = (x.double() @ (w0.double() + d.double()).T).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "not a readable safetensors file"),  # empty
        (b"\x00" * 7, "not a readable safetensors file"),  # truncated header
        (None, "not a readable"),  # missing
    ],
)
def test_a_bad_delta_file_is_one_user_error(tmp_path, content, fragment):
    if content is not None:
        (tmp_path / runfolder.BASE_DELTA).write_bytes(content)
    with pytest.raises(UserError, match=fragment):
        runfolder.read_base_delta(tmp_path)


def test_a_delta_for_no_weight_of_the_model_is_refused():
    with pytest.raises(UserError, match="matches no weight"):
        runfolder.apply_base_delta(Plain(), {"base_model.model.nope.weight": torch.zeros(2, 3)})
