"""Tests for graphprune/dump.py: the HTML page lists and draws every group and fetches nothing."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import timm
import transformers

import graphprune
import torch
from torch import nn


class Page(HTMLParser):
    """Group ids of table rows and of drawn SVG columns, and every attribute that could load a resource."""

    def __init__(self):
        super().__init__()
        self.rows, self.columns, self.drawn, self.external, self.tags = set(), set(), {}, [], set()
        self._column = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "tr" and "data-group" in a:
            self.rows.add(int(a["data-group"]))
        if tag == "g" and "data-group" in a:
            self._column = int(a["data-group"])
            self.columns.add(self._column)
        if tag in ("rect", "circle") and self._column is not None and a.get("fill") not in (None, "none"):
            self.drawn[self._column] = self.drawn.get(self._column, 0) + 1
        self.external += [v for k, v in a.items() if k in ("src", "href") and v and not v.startswith("#")]

    def handle_endtag(self, tag):
        if tag == "g":
            self._column = None


def _llama():
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=100, use_cache=False)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("build", [lambda: timm.create_model("resnet50").eval(), _llama], ids=["resnet50", "llama"])
def test_html_lists_and_draws_every_group_in_one_file(build, tmp_path) -> None:
    groups = graphprune.find_groups(build())
    groups.to_html(str(tmp_path / "groups.html"))
    page = Page()
    page.feed((tmp_path / "groups.html").read_text())
    ids = {g.id for g in groups}
    assert page.rows == ids and page.columns == ids
    assert all(page.drawn.get(i, 0) >= 1 for i in ids)  # each group has a mark in some module's row
    assert not page.external and not {"script", "link", "img", "iframe"} & page.tags  # self-contained
    text = (tmp_path / "groups.html").read_text()
    for g in groups:
        if g.frozen:
            assert g.frozen.split("(")[0].strip() in text  # frozen parts carry their reason


def test_dot_has_an_edge_per_producer_and_reader(tmp_path) -> None:
    groups = graphprune.find_groups(_llama())
    text = groups.to_dot(str(tmp_path / "g.dot"))
    assert text.startswith("digraph graphprune {") and text.rstrip().endswith("}")
    assert all(f"// group {g.id}:" in text for g in groups)
    mlp = next(g for g in groups.prunable if any(m.fqn == "model.layers.0.mlp.up_proj.weight" and m.dim == 0
                                                 for m in g.members))
    assert f'"model.layers.0.mlp.up_proj" -> ".g{mlp.id}"' in text and f'".g{mlp.id}" -> "model.layers.0.mlp.down_proj"' in text
    assert text.count("->") < 10 * len(groups)  # linear in the members, not producers x readers
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg", str(tmp_path / "g.dot"), "-o", str(tmp_path / "g.svg")], check=True)


def test_dot_ids_of_modules_and_groups_never_collide() -> None:
    """A module may be called ``g0``; group nodes keep ids no module FQN can take."""
    model = nn.Sequential()
    model.add_module("g0", nn.Linear(4, 8))
    model.add_module("act", nn.ReLU())
    model.add_module("out", nn.Linear(8, 2))
    text = graphprune.find_groups(model, torch.randn(2, 4)).to_dot()
    assert '"g0" -> ".g0"' in text and '".g0" -> "out"' in text
