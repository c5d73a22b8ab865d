"""One way to save a model with its config: a folder of weights and a descriptor, and a recorder of
constructor arguments, so that a saved model loads without dtlabel's training code.

A saved model is a folder (``RUN/head``, ``RUN/student``, ``RUN/backbone``) holding
``<name>.safetensors`` (the ``state_dict``, CPU, contiguous, key order fixed) and ``<name>.json``
(``{"format": "dtlabel-<name>/1", ...}``: what rebuilds the module plus provenance). The folder is
written beside its place and renamed in as a whole, the descriptor last, so a reader sees the old
folder, the new one, or none (diffusers' and smp's ``save_pretrained`` follow the same pattern;
smp's hub files are written into the same folder through ``extra``).

:class:`RecordsConfig` is the mixin of dtlabel's own modules whose constructor arguments are their
config (heads, teachers): it records the bound arguments of ``__init__`` (defaults filled in) in
``self.kwargs``, as JSON-able values, before the constructor runs; the descriptor stores them and a
loader calls the constructor with them again. :class:`ModelFiles` reads and writes the folder.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from dtlabel.errors import ModelError
from dtlabel.io import atomic_dir, read_json, save_tensors, write_json


def plain(value: Any) -> Any:
    """A JSON-able copy of an option value: sequences become lists, mappings dicts (recursively)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class RecordsConfig:
    """Mixin: ``self.kwargs`` holds the constructor arguments that rebuild the object.

    Class attributes: ``built_from`` names the arguments the object is built from rather than
    configured with (a head's ``spec``, a teacher's ``path``: not recorded); ``record_inherited``:
    False records the outermost constructor only (a subclass that fixes a parent's argument keeps
    its own record, as heads need), True adds every parent constructor's arguments too, defaults
    included (teachers, whose families take the diffusion options through ``**kwargs``).
    """

    built_from: ClassVar[tuple[str, ...]] = ()
    record_inherited: ClassVar[bool] = False
    kwargs: dict[str, Any]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording(cls.__dict__["__init__"])  # type: ignore[method-assign]

    def record(self, **resolved: Any) -> None:
        """Replace recorded options by their resolved values (a default that depends on other
        arguments, a value normalised), so a saved object does not depend on the rule; options the
        recorded constructors do not take are ignored."""
        self.kwargs.update({k: plain(v) for k, v in resolved.items() if k in self.kwargs})


def _recording(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``__init__`` so that it first stores its bound arguments in ``self.kwargs``."""
    sig = inspect.signature(init)
    if any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()):
        raise TypeError(f"{init.__qualname__}: recorded options must be named arguments, not *args")

    @functools.wraps(init)
    def wrapper(self: RecordsConfig, *args: Any, **kwargs: Any) -> None:
        first = "kwargs" not in self.__dict__
        if first or type(self).record_inherited:
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            recorded: dict[str, Any] = self.__dict__.setdefault("kwargs", {})  # bypasses nn.Module.__setattr__
            skip = ("self", *type(self).built_from)
            for name, value in bound.arguments.items():
                if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    for k, v in value.items():
                        recorded.setdefault(k, plain(v))
                elif name not in skip:
                    recorded.setdefault(name, plain(value))
        init(self, *args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class ModelFiles:
    """The files of one kind of saved model: ``<name>.safetensors`` + ``<name>.json`` of ``format``."""

    name: str        # head | student | backbone
    format: str      # dtlabel-head/1 ...

    @property
    def weights(self) -> str:
        return f"{self.name}.safetensors"

    @property
    def descriptor(self) -> str:
        return f"{self.name}.json"

    def save(self, folder: str | Path, state: Mapping[str, torch.Tensor], descriptor: Mapping[str, Any],
             metadata: Mapping[str, str] | None = None, extra: Callable[[Path], Any] | None = None) -> Path:
        """Write the folder atomically: weights, then ``extra(tmp)`` (other formats' files), then
        the descriptor (``format`` first). ``state`` keys keep their order."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            save_tensors(tensors, tmp / self.weights, metadata={"format": self.format, **(metadata or {})})
            if extra is not None:
                extra(tmp)
            write_json(tmp / self.descriptor, {"format": self.format, **descriptor})  # last: the folder is complete
        return folder

    def read(self, folder: str | Path, what: str = "", required: Sequence[str] = (), fix: str = "") -> dict[str, Any]:
        """The descriptor of a saved folder, checked (format, ``required`` keys); ``ModelError`` naming
        the file otherwise. ``what`` prefixes the message (``--student RUN``: then the file is named
        by its name alone), ``fix`` replaces the default remedy."""
        path = Path(folder) / self.descriptor
        lead = f"{what}: " if what else ""
        desc = read_json(path, error=ModelError, what=f"{lead}cannot read {self.descriptor if what else path}",
                         fix=fix or f"the {self.name} folder is incomplete or damaged")
        if not isinstance(desc, dict) or desc.get("format") != self.format:
            got = desc.get("format") if isinstance(desc, dict) else type(desc).__name__
            raise ModelError(f"{lead}{path} is not a dtlabel {self.name} descriptor (format {got!r}, "
                             f"expected {self.format!r})")
        for key in required:
            if key not in desc:
                raise ModelError(f"{lead}{path} lacks '{key}'; save the {self.name} again")
        return desc

    def state(self, folder: str | Path, what: str = "") -> dict[str, torch.Tensor]:
        """The saved ``state_dict`` (CPU); ``ModelError`` naming the file if it cannot be read."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(folder) / self.weights
        try:
            return load_file(str(path))
        except (OSError, SafetensorError) as exc:
            lead = f"{what}: " if what else ""
            raise ModelError(f"{lead}cannot read {path}: {' '.join(str(exc).split())[:200]}") from None

    def load_into(self, module: torch.nn.Module, folder: str | Path, what: str = "") -> torch.nn.Module:
        """Load the saved weights into ``module`` (strict); ``ModelError`` if they do not fit it."""
        try:
            module.load_state_dict(self.state(folder, what), strict=True)
        except RuntimeError as exc:
            lead = f"{what}: " if what else ""
            first = str(exc).strip().splitlines()[0]
            raise ModelError(f"{lead}{Path(folder) / self.weights} does not match {self.descriptor}: {first}") from None
        return module
