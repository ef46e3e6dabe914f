import pytest
import torch

from lmrnn.averaging import WeightAverage, should_start


def test_the_average_is_the_arithmetic_mean_of_the_iterates_on_a_toy_problem():
    """SGD on a noisy quadratic; after `start`, the kept average equals the plain mean of the
    weights after each later step (the iterates before `start` do not count)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    average = WeightAverage(model)
    iterates = []
    for step in range(30):
        x = torch.randn(8, 4)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 9:
            average.start()
        elif average.active:
            average.update()
            iterates.append([p.detach().clone() for p in model.parameters()])
    assert average.count == len(iterates) == 20
    for kept, *values in zip(average.average, *iterates):
        torch.testing.assert_close(kept, torch.stack(values).mean(0), rtol=0, atol=1e-6)


def test_applied_swaps_the_average_in_and_the_weights_back():
    model = torch.nn.Linear(2, 2)
    average = WeightAverage(model)
    with average.applied():  # not started: the weights as they are
        assert torch.equal(model.weight, model.weight)
    raw = model.weight.detach().clone()
    average.start()
    with torch.no_grad():
        model.weight.add_(2.0)
    average.update()  # the mean of one iterate: the current weights
    with torch.no_grad():
        model.weight.add_(2.0)
    average.update()  # mean of raw + 2 and raw + 4
    with average.applied():
        torch.testing.assert_close(model.weight, raw + 3.0)
    torch.testing.assert_close(model.weight, raw + 4.0)
    restored = WeightAverage(model)
    restored.load_state_dict(average.state_dict())
    assert restored.count == 2 and torch.equal(restored.average[0], average.average[0])
    with pytest.raises(ValueError, match="does not match"):
        WeightAverage(torch.nn.Linear(3, 2)).load_state_dict(average.state_dict())


def test_the_non_monotone_trigger_by_hand():
    # n = 2: compare with the best loss from before the last 2 evaluations
    assert not should_start([5.0, 4.0], 4.5, patience=2)  # too few evaluations to judge
    assert not should_start([5.0, 4.0, 4.2, 4.1], 3.9, patience=2)  # still improving on 4.0
    assert should_start([5.0, 4.0, 4.2, 4.1], 4.05, patience=2)  # worse than 4.0 two evaluations on
    assert not should_start([5.0, 4.0, 3.9, 4.1], 3.95, patience=2)  # 4.0 is the reference, not 3.9
