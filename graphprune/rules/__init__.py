"""Coupling rules, one module per op family; importing this package registers them all."""
from . import (attention, concat_split, conv, elementwise, embedding, factory, indexing, layout, linear, norm,
               pooling, recurrent, reduction, shape, slicing)  # noqa: F401
