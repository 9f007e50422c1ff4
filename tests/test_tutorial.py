"""The tutorial's single neuron, by the numbers: w=2, b=1, x=3, y_true=10."""

import torch

from manualgrad import ManualLinear, ManualMSELoss


def test_single_neuron_chain_rule():
    neuron = ManualLinear(1, 1)
    with torch.no_grad():
        neuron.weight.fill_(2.0)
        neuron.bias.fill_(1.0)
    x, y_true = torch.tensor([[3.0]]), torch.tensor([[10.0]])
    y_hat = neuron(x)  # 2 * 3 + 1 = 7
    loss = ManualMSELoss()(y_hat, y_true)  # (7 - 10)^2 = 9
    loss.backward()
    assert y_hat.item() == 7.0
    assert loss.item() == 9.0
    # dL/dy_hat = 2 (7 - 10) = -6; dL/dw = -6 * x = -18; dL/db = -6
    assert neuron.weight.grad.item() == -18.0
    assert neuron.bias.grad.item() == -6.0
