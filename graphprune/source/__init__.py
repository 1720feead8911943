"""Stage 2 helper, source reading: the heuristics that read a model's code where the graph holds numbers.

The traced graph records every size as a number. Where the model's code computes a size from an
attribute (``view(B, N, self.heads, -1)``, ``torch.split(y, self.split_sizes)``) or from an
input's shape (``B, N, C = x.shape`` ... ``reshape(B, N, C)``), pruning must keep that computation
true: the coupling rules bind the attribute (surgery updates it) or couple the dim to that input.
Finding the name means reading the statement that made a node, from its stack trace. These
heuristics are the closest thing graphprune has to per-architecture code, so they all live here,
and one switch turns them off: ``find_groups(model, read_source=False)`` or
``shrink(model, ratio, read_source=False)``. Rules then decide from the graph alone: sizes the code
computes stay frozen where the graph shows them, and a pruned forward that still breaks is caught
by surgery and its module type left unpruned.

>>> with reading(False):
...     statement_source(None)
''
"""
from __future__ import annotations

from .attrs import attr_read_at, attribute_paths, int_attrs_named, list_attr_matching, resolve
from .calls import evidence_names, self_path, with_arguments
from .frames import (NAME, OWN_LAYERS_DIR, TORCH_DIR, enabled, frame, function_source, helper_frames, in_torch,
                     nearby_source, reading, statement_names, statement_source)
from .sizes import (FROM_SHAPE, constant_size, direct_read, follows, names_in, product_terms, quotient, shape_read,
                    size_exprs)

__all__ = ["FROM_SHAPE", "NAME", "OWN_LAYERS_DIR", "TORCH_DIR", "attr_read_at", "attribute_paths", "constant_size",
           "direct_read", "enabled", "evidence_names", "follows", "frame", "function_source", "helper_frames",
           "in_torch", "int_attrs_named", "list_attr_matching", "names_in", "nearby_source", "product_terms", "quotient",
           "reading", "resolve", "self_path", "shape_read", "size_exprs", "statement_names", "statement_source",
           "with_arguments"]
