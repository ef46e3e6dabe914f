import pytest
import torch

from lmrnn.config_parser import load_config
from lmrnn.optimizer import build_optimizer, guarded_step, load_optimizer_state


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_guarded_step_on_the_device_does_nothing_at_all_when_told_so(optimizer):
    """The fused kernels skip on the device: weights, moments and step count stay as they were,
    from the very first step (fused SGD's momentum buffers exist from the start)."""
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, load_config(overrides=[f"train.optimizer={optimizer}", "train.lr=0.01", "train.momentum=0.9",
                                                        "train.weight_decay=0.1"]).train)
    assert opt.defaults["fused"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    guarded_step(opt, torch.tensor(False))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not v.count_nonzero() for p in model.parameters() for v in opt.state[p].values())  # step 0, zero moments
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    reference = torch.nn.Linear(3, 2)
    reference.load_state_dict(before)
    settings = {k: opt.defaults[k] for k in ("lr", "weight_decay", *(("momentum",) if optimizer == "sgd" else ()))}
    plain = type(opt)(reference.parameters(), **settings)
    for p in reference.parameters():
        p.grad = torch.ones_like(p)
    guarded_step(opt, torch.tensor(True))
    plain.step()  # a first step, as the skipped one never happened
    assert all(torch.allclose(a, b) for a, b in zip(model.parameters(), reference.parameters()))
    assert not torch.equal(model.weight, before["weight"])
    load_optimizer_state(opt, plain.state_dict())  # a state saved unfused keeps this optimizer fused
    assert opt.param_groups[0]["fused"] and opt.param_groups[0]["foreach"] is None
