"""Rules for recurrent layers (aten.lstm, aten.gru): the input features couple to the first layer's
input weights; hidden sizes stay fixed (every gate and the recurrence read them)."""
from __future__ import annotations

from torch import fx

from ..coupling import Builder, register_rule

aten = __import__("torch").ops.aten


@register_rule(aten.lstm, aten.gru, aten.rnn_tanh, aten.rnn_relu)
def recurrent(b: Builder, node: fx.Node) -> None:
    """``op(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)``:
    ``params`` holds (w_ih, w_hh[, b_ih, b_hh][, w_hr]) per layer and direction, layer 0 first."""
    x, params = node.args[0], list(node.args[2])
    num_layers, bidirectional = node.args[4], node.args[7]
    if not isinstance(params[0], fx.Node) or b.shape(x) is None:
        return  # packed sequences or the data/batch_sizes overload: leave every dim frozen
    per_direction = len(params) // (num_layers * (2 if bidirectional else 1))
    feature = b.slots(x)[-1]
    for w_ih in params[:per_direction * (2 if bidirectional else 1):per_direction]:
        b.link_same(feature, b.slot(w_ih, 1), "input features of a recurrent layer")
        b.role(b.slot(w_ih, 1), "in")
