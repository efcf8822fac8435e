"""Where a torch file's state dict lies when it is not the file's top-level dict: ``{"model": state_dict, …}``.

``torch.save({"model": model.state_dict(), "epoch": 3}, …)`` (a training loop's save) holds every weight one level
down. The reader names tensors through the nesting (``model.model.layers.0…``, names.py), the very names a flat state
dict under a wrapper's ``model.`` prefix has: only the pickle's own top level tells them apart, so it is looked at
here, while the file is read. Whether that matters is its loader's business (checkpoint/nestedstate.py).
"""

from __future__ import annotations

from typing import Any

from nandoctor.checkpoint.roles import MODEL_CONTAINER_KEYS
from nandoctor.readers.torch.stubs import TensorStub


def nested_under(root: Any) -> str | None:
    """The key of the unpickled ``root`` dict holding a state dict (a dict with tensors at its own top), where no
    tensor lies at ``root``'s top itself: a model container's key first (``model``, ``state_dict``: roles.py); None
    for any other object."""
    # (dict.values and dict.items, not root's: a BUILD may have set an attribute named "items" on an OrderedDict)
    if not isinstance(root, dict) or any(isinstance(value, TensorStub) for value in dict.values(root)):
        return None
    holders = [key for key, value in dict.items(root) if isinstance(key, str) and isinstance(value, dict)
               and any(isinstance(v, TensorStub) for v in dict.values(value))]
    return next((key for key in holders if key in MODEL_CONTAINER_KEYS), holders[0] if holders else None)


__all__ = ["nested_under"]
