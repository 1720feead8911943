"""Rules for recurrent layers (aten.lstm, aten.gru, aten.rnn_tanh, aten.rnn_relu) and cells
(aten.lstm_cell, ...): the input features couple to the (first layer's) input weights, and the
hidden units of an ``nn.RNNBase`` (every layer and direction together, since the module has one
``hidden_size`` and its states stack them) or an ``nn.RNNCellBase`` couple to each gate's rows, the
recurrent columns, the next layer's input columns, the states and the outputs.

A hidden unit reaches other units only through columns of the recurrent and next-layer weights and
through what reads the outputs; its own gate rows act on it alone (LSTM, GRU and plain RNN alike), so
removing it after zeroing those columns leaves every output that other units compute unchanged.
"""
from __future__ import annotations

import operator

import numpy as np
from torch import fx, nn

from ..coupling import Builder, register_rule
from .factory import UNIFORM

aten = __import__("torch").ops.aten

GATES = {aten.lstm: 4, aten.gru: 3, aten.rnn_tanh: 1, aten.rnn_relu: 1}
CELL_GATES = {aten.lstm_cell: 4, aten.gru_cell: 3, aten.rnn_tanh_cell: 1, aten.rnn_relu_cell: 1}


@register_rule(aten.lstm, aten.gru, aten.rnn_tanh, aten.rnn_relu)
def recurrent(b: Builder, node: fx.Node) -> None:
    """``op(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)``:
    ``params`` holds (w_ih, w_hh[, b_ih, b_hh][, w_hr]) per layer and direction, layer 0 first;
    ``hx`` is ``[h0, c0]`` for an LSTM, ``h0`` otherwise; the outputs (taken through getitem) are
    the sequence, then the final states."""
    outs = {u.args[1]: u for u in node.users if u.target is operator.getitem}
    if node.target._overloadname != "input":  # the (data, batch_sizes, ...) overload of packed sequences
        _freeze_left(b, [*outs.values(), *node.all_input_nodes], "packed sequences are not pruned")
        return
    x, params = node.args[0], list(node.args[2])
    num_layers, bidirectional = node.args[4], node.args[7]
    per_direction = len(params) // (num_layers * (2 if bidirectional else 1))
    feature, first = b.slots(x)[-1], params[:per_direction * (2 if bidirectional else 1):per_direction]
    for w_ih in first:
        b.link_same(feature, b.slot(w_ih, 1), "input features of a recurrent layer")
        b.role(b.slot(w_ih, 1), "in")
    why = _hidden_unsupported(b, node, per_direction)
    if why:
        _freeze_left(b, [*outs.values(), *_states_in(node.args[1]), *params], why, tuple(b.slot(w, 1) for w in first))
        return
    _hidden(b, node, params, per_direction, outs)


def _hidden_unsupported(b: Builder, node: fx.Node, per_direction: int) -> str | None:
    """Why the hidden units stay as they are here; None when they can be pruned."""
    path, mod = b.module()
    fqn = path or "<root>"
    if not isinstance(mod, nn.RNNBase):
        return "the recurrent op is called outside an nn.RNNBase module: its hidden size is kept"
    if per_direction != (4 if node.args[3] else 2) + (1 if getattr(mod, "proj_size", 0) else 0):
        return (f"{fqn}: {per_direction} weights per layer and direction, not (w_ih, w_hh[, b_ih, b_hh][, w_hr]); "
                f"hidden size kept")
    if len(b.shape(node.args[0])) != 3:
        return f"{fqn}: a recurrent input that is not (batch, time, features) keeps its hidden size"
    return None


def _hidden(b: Builder, node: fx.Node, params: list, per_direction: int, outs: dict) -> None:
    """Without a projection the layer emits its hidden units; an LSTM with ``proj_size`` emits
    ``h = W_hr (o * tanh(c))``, so its cell units (gate rows, ``W_hr``'s columns, the cell state)
    and its projected units (``W_hr``'s rows, the recurrent and next-layer columns, the outputs and
    the hidden state) are two groups."""
    fqn, mod = b.module()
    gates, dirs = GATES[node.target.overloadpacket], 2 if node.args[7] else 1
    hidden = _hidden_slot(b, node, fqn, mod)
    emitted = _hidden_slot(b, node, fqn, mod, "proj_size") if getattr(mod, "proj_size", 0) else hidden
    why = f"hidden units of {fqn or '<root>'}"
    for i in range(0, len(params), per_direction):
        w_ih, w_hh, *rest = params[i:i + per_direction]
        biases, w_hr = (rest[:-1], rest[-1]) if emitted is not hidden else (rest, None)
        _gate_rows(b, [w_ih, w_hh, *biases], hidden, gates, why)
        b.link_same(b.slot(w_hh, 1), emitted, f"recurrent input of {why}")
        b.role(b.slot(w_hh, 1), "in")
        if w_hr is not None:
            b.link_same(b.slot(w_hr, 1), hidden, f"projection of {why}")
            b.link_same(b.slot(w_hr, 0), emitted, f"projected {why}")
            b.role(b.slot(w_hr, 1), "in")
            b.role(b.slot(w_hr, 0), "out")
        if i >= per_direction * dirs:  # a later layer reads both directions of the one before
            _link_blocks_of(b, b.slot(w_ih, 1), emitted, dirs, why)
            b.role(b.slot(w_ih, 1), "in")
    _states(b, node, (emitted, hidden), outs, dirs, why)


def _hidden_slot(b: Builder, node: fx.Node, fqn: str, mod: nn.Module, attr: str = "hidden_size"):
    hidden = b.virtual(node, attr, getattr(mod, attr))
    b.bind(hidden, fqn, attr)
    return hidden


def _gate_rows(b: Builder, weights: list, hidden, gates: int, why: str) -> None:
    """Each gate's rows of one unit, ``j, H + j, 2H + j, ...``, produce it."""
    for p in weights:
        _link_blocks_of(b, b.slot(p, 0), hidden, gates, why)
        b.role(b.slot(p, 0), "out")


def _states(b: Builder, node: fx.Node, units: tuple, outs: dict, dirs: int, why: str) -> None:
    """The sequence output's features are (direction, unit); the states are (layer x direction,
    batch, unit), given as ``hx`` and returned after the sequence: the hidden state, then (LSTM)
    the cell state. ``units``: what the layer emits (the hidden state's units) and its cell units."""
    xs = b.slots(node.args[0])
    batch = xs[0] if node.args[8] else xs[1]
    if 0 in outs:
        seq = b.slots(outs[0])
        b.link_same(xs[0], seq[0])
        b.link_same(xs[1], seq[1])
        _link_blocks_of(b, seq[2], units[0], dirs, why)
    for k, state in [*enumerate(_states_in(node.args[1])), *((k - 1, outs[k]) for k in sorted(outs) if k > 0)]:
        s = b.slots(state)
        _default_state(b, state, s[2])
        b.freeze(s[0], "one state per layer and direction")
        b.link_same(batch, s[1])
        b.link_same(s[2], units[k], f"states of {why}")


def _default_state(b: Builder, state: fx.Node, unit_dim) -> None:
    """Zeros the module made itself as the initial state follow its ``hidden_size``: ``nn.LSTM``
    sizes them by a local copy of it, which the factory rule (it reads the statement for
    attribute names) cannot see, so it froze that dim. Only the factory rule has run on this node
    (the module's own code made it for this call), so its freeze is the one dropped."""
    made_here = getattr(state.target, "overloadpacket", None) in UNIFORM and not state.all_input_nodes
    if made_here and b.traced.module_path(state) == b.module()[0]:
        b.g.nodes[unit_dim]["frozen"].clear()


def _link_blocks_of(b: Builder, whole, unit, blocks: int, why: str) -> None:
    """``whole`` is ``blocks`` copies of ``unit`` side by side: index k is unit k mod width."""
    idx = np.arange(b.size(whole))
    if len(idx) != blocks * b.size(unit):
        b.freeze(whole, f"{len(idx)} is not {blocks} x {b.size(unit)} ({why})")
        return
    b.link(whole, unit, idx, idx % b.size(unit), why)


def _states_in(hx) -> list:
    """The states an op is given: ``[h, c]`` for an LSTM, ``h`` alone otherwise."""
    return list(hx) if isinstance(hx, (list, tuple)) else [hx]


def _freeze_left(b: Builder, nodes, why: str, inputs: tuple = ()) -> None:
    """Freeze what the rule leaves as it is, with the reason (not "dim not handled"); ``inputs``:
    the input-feature slots, which stay linked."""
    for n in nodes:
        for s in b.slots(n):
            if s not in inputs:
                b.freeze(s, why)


@register_rule(*CELL_GATES)
def cell(b: Builder, node: fx.Node) -> None:
    """``op(input, hx, w_ih, w_hh, b_ih, b_hh)``, one time step: ``hx`` is ``[h, c]`` for an LSTM
    cell, ``h`` otherwise; the output is ``(h, c)`` (through getitem) or ``h``. The steps of a loop
    share the weights, and each reads the state the one before returned, so they couple alike."""
    x, hx, w_ih, w_hh, *biases = node.args
    biases = [p for p in biases if isinstance(p, fx.Node)]
    states = _states_in(hx)
    outs = [u for u in node.users if u.target is operator.getitem] if b.shape(node) is None else [node]
    xs = b.slots(x)
    b.link_same(xs[-1], b.slot(w_ih, 1), "input features of a recurrent cell")
    b.role(b.slot(w_ih, 1), "in")
    fqn, mod = b.module()
    if not isinstance(mod, nn.RNNCellBase) or len(xs) != 2:
        _freeze_left(b, [*outs, *states, w_ih, w_hh, *biases], f"{fqn or '<root>'}: a recurrent cell outside an "
                        "nn.RNNCellBase (or not batched) keeps its hidden size", (b.slot(w_ih, 1),))
        return
    hidden = _hidden_slot(b, node, fqn, mod)
    why = f"hidden units of {fqn or '<root>'}"
    _gate_rows(b, [w_ih, w_hh, *biases], hidden, CELL_GATES[node.target.overloadpacket], why)
    b.link_same(b.slot(w_hh, 1), hidden, f"recurrent input of {why}")
    b.role(b.slot(w_hh, 1), "in")
    for state in [*states, *outs]:
        s = b.slots(state)
        if state in states:
            _default_state(b, state, s[1])
        b.link_same(xs[0], s[0])
        b.link_same(s[1], hidden, f"states of {why}")
