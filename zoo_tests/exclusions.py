"""Zoo data: timm models left out of the zoo run, each with a one-line reason."""
from __future__ import annotations

# Cost is the only reason to leave a model out; a model graphprune gets wrong is a failure.
EXCLUDED: dict[str, str] = {
}
