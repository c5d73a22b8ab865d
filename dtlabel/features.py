"""Feature maps that carry their own shape metadata, so heads size themselves (timm's FeatureInfo idea).

A teacher (any family) returns named maps ``{name: (B, C, H / stride, W / stride)}`` and describes
them with a :class:`FeatureSpec`; a head is built from that spec alone. This module knows nothing
about teachers, so heads and other consumers depend on it and not on the teachers package.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dtlabel.errors import ConfigError, did_you_mean

__all__ = ["FeatureSpec", "feature_key"]


def feature_key(block: str, timesteps: Sequence[int]) -> str:
    """Name of the feature map of ``block`` at ``timesteps``: ``"up_blocks.1@t=50+150"``."""
    return f"{block}@t={'+'.join(str(int(t)) for t in timesteps)}"


@dataclass(frozen=True)
class FeatureSpec:
    """Names, channel counts and strides of a teacher's feature maps, in output order.

    ``strides[i]`` is the input image size divided by the size of map ``i`` (relative to the
    *image*, also for latent-space teachers), so a map of an ``(H, W)`` image is
    ``(channels[i], H // strides[i], W // strides[i])``.
    """

    names: tuple[str, ...]
    channels: tuple[int, ...]
    strides: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if not len(self.names) == len(self.channels) == len(self.strides):
            raise ConfigError(
                f"feature spec has {len(self.names)} names, {len(self.channels)} channel counts and "
                f"{len(self.strides)} strides; they must have the same length"
            )
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"feature spec has duplicate names: {list(self.names)}")

    @property
    def total_channels(self) -> int:
        """Sum of the channels of all maps (the per-pixel dimension after upsample + concat)."""
        return sum(self.channels)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
        """Yield ``(name, channels, stride)`` per map."""
        return iter(zip(self.names, self.channels, self.strides))

    def index(self, name: str) -> int:
        """Position of map ``name``; raises ``ConfigError`` with close matches if unknown."""
        if name not in self.names:
            raise ConfigError(f"unknown feature {name!r}; known: {list(self.names)}{did_you_mean(name, self.names)}")
        return self.names.index(name)

    def to_dict(self) -> dict[str, list]:
        """JSON-able form: ``{"names": [...], "channels": [...], "strides": [...]}``."""
        return {"names": list(self.names), "channels": list(self.channels), "strides": list(self.strides)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`; raises ``ConfigError`` if a field is missing."""
        missing = [k for k in ("names", "channels", "strides") if k not in data]
        if missing:
            raise ConfigError(f"feature spec is missing {missing}; expected keys names, channels, strides")
        return cls(tuple(data["names"]), tuple(data["channels"]), tuple(data["strides"]))
