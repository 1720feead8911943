"""Tests for graphprune/source/: the source-reading heuristics, their switch, and what they read."""
from __future__ import annotations

import ast

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import nn

import graphprune
from graphprune import source
from graphprune.testing import assert_prune_matches

from .models import EinopsAttention, HandGQA

X = torch.randn(2, 5, 16)


class StageHeads(nn.Module):
    """Heads read from a per-stage list: ``reshape(B, N, 3, self.heads[self.stage], -1)``."""

    def __init__(self):
        super().__init__()
        self.heads, self.stage = [2, 4], 1
        self.qkv, self.proj, self.fc = nn.Linear(16, 48), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads[self.stage], -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, -1)
        return self.fc(x + self.proj(y))


class LiteralHeads(nn.Module):
    """The head count written as a number next to a -1: removing a head would silently give four
    heads of a smaller size, so the heads stay."""

    def __init__(self):
        super().__init__()
        self.qkv, self.proj, self.fc = nn.Linear(16, 48), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, 4, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, -1)
        return self.fc(x + self.proj(y))


class Helper(nn.Module):
    """The reshape happens in a helper method, not in forward (torchvision ViT's _process_input)."""

    def __init__(self):
        super().__init__()
        self.hidden_dim = 8
        self.conv, self.fc = nn.Conv2d(3, 8, 2, stride=2), nn.Linear(8, 3)

    def _process_input(self, x):
        n = x.shape[0]
        return self.conv(x).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)

    def forward(self, x):
        return self.fc(self._process_input(x).mean(1))


def test_an_indexed_list_attribute_is_bound_and_followed() -> None:
    heads = [g for g in graphprune.find_groups(StageHeads(), X).prunable if g.unit == "head"]
    assert [(a.fqn, a.attr) for g in heads for a in g.attrs] == [("", "heads[1]")]
    small = graphprune.shrink(StageHeads().eval(), 0.3, example_inputs=X, tolerance=0.2)
    assert small.heads[0] == 2 and small.heads[1] < 4
    assert_prune_matches(StageHeads(), X)


def test_a_size_written_as_a_number_stays() -> None:
    groups = graphprune.find_groups(LiteralHeads(), X)
    assert not [g for g in groups.prunable if g.unit == "head"]
    assert any("number written in the model's code" in (g.frozen or "") for g in groups)


def test_a_helper_method_is_read_and_a_root_attribute_bound() -> None:
    x = torch.randn(2, 3, 8, 8)
    groups = graphprune.find_groups(Helper(), x)
    conv = next(g for g in groups.prunable if any(m.fqn == "conv.weight" for m in g.members))
    assert [(a.fqn, a.attr) for a in conv.attrs] == [("", "hidden_dim")]
    small = graphprune.shrink(Helper().eval(), 0.3, example_inputs=x, tolerance=0.2)
    assert small.hidden_dim == small.conv.out_channels < 8


def test_switching_source_reading_off_freezes_what_only_the_code_shows() -> None:
    x = torch.randn(2, 3, 8, 8)
    off = graphprune.find_groups(Helper(), x, read_source=False)
    assert not any(any(m.fqn == "conv.weight" for m in g.members) for g in off.prunable)
    assert "read_source=False" in " ".join(g.frozen or "" for g in off)
    with source.reading(False):
        assert not source.enabled() and source.statement_source(None) == ""
    assert source.enabled()
    # a model whose widths no code computes prunes as before
    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    assert [g.width for g in graphprune.find_groups(mlp, X, read_source=False).prunable] == [32]


def test_shape_expressions_are_read_through_names_and_starred_shapes() -> None:
    model, x = HandGQA(), torch.randn(2, 5, 32)
    traced = graphprune.trace(model, x)
    view = next(n for n in traced.graph.nodes if n.name == "view")
    exprs = source.size_exprs(view, 4)
    assert [ast.unparse(e) for e in exprs] == ["B", "T", "-1", "self.head_dim"]
    assert source.follows(exprs[2], "") and not source.follows(exprs[3], "")
    assert source.attribute_paths("x.view(B, self.heads[self.i], self.cfg.dim // 2)") == ["heads[i]", "i", "cfg.dim"]


def _split_heads(x, heads):
    return x.view(*x.shape[:-1], heads, -1).transpose(1, 2)


class ArgumentHeads(nn.Module):
    """The head count reaches the reshape as a parameter of a helper (DeBERTa's
    ``transpose_for_scores(x, attention_heads)``): a method, a module-level function, a default,
    or a parameter the helper changes before using it."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.num_heads = how, 4
        self.qkv, self.proj, self.fc = nn.Linear(16, 48), nn.Linear(16, 16), nn.Linear(16, 3)

    def split(self, x, heads=4):
        return x.view(*x.shape[:-1], heads, -1).transpose(1, 2)

    def split_changed(self, x, heads):
        heads = heads * 1
        return x.view(*x.shape[:-1], heads, -1).transpose(1, 2)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.how == "function":
            q, k, v = _split_heads(q, self.num_heads), _split_heads(k, self.num_heads), _split_heads(v, self.num_heads)
        elif self.how == "default":
            q, k, v = self.split(q), self.split(k), self.split(v)
        elif self.how == "changed":
            q, k, v = (self.split_changed(t, self.num_heads) for t in (q, k, v))
        else:
            q, k, v = self.split(q, heads=self.num_heads), self.split(k, self.num_heads), self.split(v, self.num_heads)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.fc(x + self.proj(y))


@pytest.mark.parametrize("how", ["method", "function"])
def test_a_size_passed_to_a_helper_is_read_as_the_callers_argument(how: str) -> None:
    model = ArgumentHeads(how).eval()
    heads = [g for g in graphprune.find_groups(model, X).prunable if g.unit == "head"]
    assert [(a.fqn, a.attr) for g in heads for a in g.attrs] == [("", "num_heads")]
    assert assert_prune_matches(model, X, kinds=("heads",)).groups_checked == 1
    small = graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.2, prune=("heads",))
    assert small.num_heads < 4 and small(X).shape == model(X).shape


@pytest.mark.parametrize("how, why", [("default", "number written in the model's code"),
                                      ("changed", "'heads' is computed from a value pruning does not update")])
def test_a_default_or_a_changed_parameter_keeps_the_heads(how: str, why: str) -> None:
    groups = graphprune.find_groups(ArgumentHeads(how), X)
    assert not [g for g in groups.prunable if g.unit == "head"]
    assert any(why in (g.frozen or "") for g in groups)


@pytest.mark.parametrize("line, rebinds", [
    ("heads = 3", True), ("a, heads = 1, 2", True), ("(b, heads) = x.shape", True), ("heads += 1", True),
    ("heads: int = 2", True), ("for i, heads in enumerate(a):", True), ("with open(p) as heads:", True),
    ("if (heads := 3):", True), ("y = x.view(heads, -1)", False), ("if heads == 3:", False), ("nheads = 2", False),
    ("f(heads=2)", False), ("x[heads] = 1", False)])
def test_a_parameter_the_helper_may_rebind_is_not_read_from_the_caller(line: str, rebinds: bool) -> None:
    from graphprune.source.calls import _reassigned

    assert _reassigned(f"def split(self, x, heads):\n    {line}\n", "heads") is rebinds


class RelBias(nn.Module):
    """A per-head bias table that its parent reads through a method, not its forward (timm's
    ``RelPosMlp.get_bias``), sized by a shape tuple attribute: ``view(self.bias_shape)``."""

    def __init__(self, heads: int, n: int):
        super().__init__()
        self.num_heads, self.bias_shape = heads, (n, n, heads)
        self.table = nn.Linear(2, heads)
        self.register_buffer("coords", torch.randn(n * n, 2))

    def get_bias(self):
        return self.table(self.coords).view(self.bias_shape).permute(2, 0, 1).unsqueeze(0)


class MethodOfChild(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_heads = 4
        self.qkv, self.proj, self.fc = nn.Linear(16, 48), nn.Linear(16, 16), nn.Linear(16, 3)
        self.rel = RelBias(4, 5)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.rel.get_bias())
        return self.fc(x + self.proj(y.transpose(1, 2).reshape(B, N, -1)))


def test_attributes_read_in_a_childs_method_bind_on_the_child() -> None:
    model = MethodOfChild().eval()
    heads = next(g for g in graphprune.find_groups(model, X).prunable if g.unit == "head")
    assert sorted((a.fqn, a.attr) for a in heads.attrs) == [("", "num_heads"), ("rel", "bias_shape[2]")]
    assert assert_prune_matches(model, X, kinds=("heads",)).groups_checked == 1
    small = graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.2, prune=("heads",))
    assert small.num_heads == small.rel.bias_shape[2] == small.rel.table.out_features < 4


@pytest.mark.parametrize("given", ["heads", "dim_head"])
def test_einops_rearrange_sizes_are_read_from_its_pattern(given: str) -> None:
    model = EinopsAttention(given=given).eval()
    heads = [g for g in graphprune.find_groups(model, X).prunable if g.unit == "head"]
    assert len(heads) == 1 and [a.attr for a in heads[0].attrs] == ["heads"]  # the merge back binds it too
    assert assert_prune_matches(model, X, kinds=("heads",)).groups_checked == 1
    small = graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.2, prune=("heads",))
    assert small.qkv.out_features < 48 and small(X).shape == model(X).shape
    assert small.heads == small.qkv.out_features // 12


def test_einops_axis_lengths_written_as_numbers_keep_the_heads() -> None:
    groups = graphprune.find_groups(EinopsAttention(given="number"), X)
    assert not [g for g in groups.prunable if g.unit == "head"]
    assert any("number written in the model's code" in (g.frozen or "") for g in groups)


class EinopsViT(nn.Module):
    """vit-pytorch's layout: patches cut by a ``Rearrange`` layer, the class token grown by
    ``einops.repeat``, heads split in a lambda mapped over q, k, v."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.heads = heads
        cut = Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=4, p2=4)
        self.patches = nn.Sequential(cut, nn.Linear(48, dim))
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.to_qkv, self.to_out, self.head = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 3)

    def forward(self, img):
        x = self.patches(img)
        b, n, _ = x.shape
        x = torch.cat((repeat(self.cls, "1 1 d -> b 1 d", b=b), x), dim=1)
        q, k, v = map(lambda t: rearrange(t, "b n (h d) -> b h n d", h=self.heads), self.to_qkv(x).chunk(3, dim=-1))
        x = x + self.to_out(rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)"))
        return self.head(x[:, 0])


class ConvToTokens(nn.Module):
    """A conv stem handing its channels to a token MLP through ``Rearrange("b c h w -> b (h w) c")``."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)
        self.tokens = Rearrange("b c h w -> b (h w) c")

    def forward(self, img):
        return self.fc(torch.relu(self.tokens(self.conv(img))))


def test_einops_layers_and_repeat_leave_the_residual_stream_and_heads_prunable() -> None:
    model, img = EinopsViT().eval(), torch.randn(2, 3, 8, 8)
    prunable = graphprune.find_groups(model, img).prunable
    assert any(g.unit == "head" for g in prunable)
    assert any(m.fqn == "cls" for g in prunable for m in g.members)  # the class token's repeat froze it
    assert assert_prune_matches(model, img).groups_checked >= 1
    small = graphprune.shrink(model, 0.3, example_inputs=img, tolerance=0.1)
    assert small.cls.shape[-1] == small.to_qkv.in_features < 16 and small(img).shape == (2, 3)


def test_a_rearrange_layer_passes_channels_it_reads_from_the_shape() -> None:
    model, img = ConvToTokens().eval(), torch.randn(2, 3, 4, 4)
    conv = next(g for g in graphprune.find_groups(model, img).prunable if g.width == 8)
    assert {m.fqn for m in conv.members} >= {"conv.weight", "fc.weight"}
    assert assert_prune_matches(model, img, fraction=0.5).groups_checked == 1


def test_a_line_inside_a_call_spread_over_lines_reads_the_whole_statement(tmp_path) -> None:
    code = tmp_path / "spread.py"
    code.write_text("def f(q, idx, n):\n    s = torch.gather(\n        q, -1,\n        idx.expand([q.size(0), n, n]))\n"
                    "    return s\n")
    text = source.frames.statement_at(str(code), 4)
    assert text.strip().startswith("s = torch.gather(") and "expand([q.size(0), n, n])" in text
    assert source.frames.statement_at(str(code), 5).strip() == "return s"


heads = 4  # a module-level constant named like the attribute below (the "global" variant reads it)


class NamedLikeAttribute(nn.Module):
    """The view's head count is a bare name equal in name and value to an attribute the forward
    never reads: only a name the code sets from that attribute may bind it."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.heads, self.cfg = how, 4, (4, 4)
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)
        self.mid, self.fc = nn.Linear(16, 32), nn.Linear(32, 3)  # a group the oracle can always check

    def split(self, t, heads):
        return t.view(t.shape[0], t.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)

    def from_attribute(self, t):
        heads = self.heads
        return t.view(t.shape[0], t.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)

    def literal(self, t):
        heads = 2 * 2
        return t.view(t.shape[0], t.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)

    def another_attribute(self, t):
        heads = self.cfg[0]
        return t.view(t.shape[0], t.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)

    def from_global(self, t):
        return t.view(t.shape[0], t.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)

    def forward(self, x):
        me = self  # a receiver the helper reader does not follow: the caller's 4 stays unread
        q, k, v = me.split(self.qkv(x), 4) if self.how == "helper" else getattr(self, self.how)(self.qkv(x))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.fc(torch.relu(self.mid(x + self.proj(y))))


@pytest.mark.parametrize("how", ["literal", "another_attribute", "from_global", "helper"])
def test_a_bare_name_the_code_sets_otherwise_does_not_bind_an_attribute_of_that_name(how: str) -> None:
    model = NamedLikeAttribute(how).eval()
    groups = graphprune.find_groups(model, X)
    assert not [a for g in groups.prunable for a in g.attrs if a.attr == "heads"], how
    assert assert_prune_matches(model, X).groups_checked == 1  # before: 4 heads of the wrong size, too


def test_a_bare_name_set_from_the_attribute_binds_it() -> None:
    model = NamedLikeAttribute("from_attribute").eval()
    heads = [g for g in graphprune.find_groups(model, X).prunable if g.unit == "head"]
    assert [a.attr for g in heads for a in g.attrs] == ["heads"]
    assert assert_prune_matches(model, X, kinds=("heads",)).groups_checked == 1
