"""A direction in a model's residual stream: a vector that names its model, kept as a small
safetensors file. `lw.SteerResidual` adds it to the residual stream; `lw.steering_vector` and
`lw.token_direction` make one.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import torch

from .. import checks
from ..errors import InputError, WrongTypeError

FORMAT = "llm-widgets direction"  # a saved file's metadata says so, so any other tensor file is refused


class Direction:
    """A vector of the residual stream's width (float32, on the CPU), with what it is for:

    - `model`: the name of the model it was made from (`lm.name`); a run of another model refuses
      it (a residual stream's axes mean nothing in another model). None: any model of its width.
    - `layer`: the block after whose output it was read (a sensible place to add it), or None.
    - `name`: what it is, for the editor and the records ("French - English", "token ' Paris'").

    `direction.save(path)` writes it as safetensors with those facts; `lw.Direction.load(path)` reads
    it back. `-direction` and `direction * 2` give new directions; `.norm` is its length.
    """

    def __init__(self, vector: Any, *, model: str | None = None, layer: int | None = None, name: str = ""):
        if not isinstance(vector, torch.Tensor):
            if not isinstance(vector, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector
            ):
                raise WrongTypeError(f"a direction is a 1-D tensor or a list of numbers; got {type(vector).__name__}")
            vector = torch.tensor([float(v) for v in vector])
        if vector.dim() != 1 or vector.numel() == 0 or vector.is_complex() or not vector.dtype.is_floating_point:
            raise InputError(
                f"a direction is one vector of real numbers (shape [hidden_size]); got a {vector.dtype} tensor "
                f"of shape {list(vector.shape)}"
            )
        vector = vector.detach().to("cpu", torch.float32).clone()
        if not torch.isfinite(vector).all():
            raise InputError("a direction must be finite: this vector holds NaN or infinity")
        if model is not None and not isinstance(model, str):
            raise WrongTypeError(f"Direction model is the model's name (lm.name) or None; got {type(model).__name__}")
        if layer is not None:
            checks.integer(layer, "Direction layer", low=0)
        if not isinstance(name, str):
            raise WrongTypeError(f"Direction name must be a string; got {type(name).__name__}")
        self.vector, self.model, self.layer, self.name = vector, model, layer, name

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Direction)
            and (self.model, self.layer, self.name) == (other.model, other.layer, other.name)
            and torch.equal(self.vector, other.vector)
        )

    def __hash__(self) -> int:
        return hash((self.model, self.layer, self.name, self.vector.numpy().tobytes()))

    def __len__(self) -> int:
        return self.vector.numel()

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    def unit(self) -> Direction:
        """The same direction with length 1 (a zero vector has none: refused)."""
        if self.norm == 0:
            raise InputError(f"direction {self.name or ''!r} is the zero vector: it has no unit direction")
        return self._like(self.vector / self.vector.norm(), self.name)

    def __neg__(self) -> Direction:
        return self._like(-self.vector, f"-({self.name})" if self.name else "")

    def __mul__(self, factor: Any) -> Direction:
        factor = checks.number(factor, "a direction's factor")
        return self._like(self.vector * factor, f"{factor:g} x ({self.name})" if self.name else "")

    __rmul__ = __mul__

    def _like(self, vector: torch.Tensor, name: str) -> Direction:
        return Direction(vector, model=self.model, layer=self.layer, name=name)

    def __repr__(self) -> str:
        where = f", layer {self.layer}" if self.layer is not None else ""
        facts = f"width {len(self)}, norm {self.norm:.4g}, model {self.model!r}{where}"
        return f"Direction({self.name or 'unnamed'!r}, {facts})"

    def check_for(self, model_name: str, width: int) -> None:
        """Refuse a model this direction was not made for, or a residual stream of another width."""
        if len(self) != width:
            raise InputError(
                f"direction {self.name or ''!r} has {len(self)} numbers, and {model_name}'s residual stream has "
                f"{width}: a direction must be made from this model (lw.steering_vector, lw.token_direction)"
            )
        if self.model is not None and self.model != model_name:
            raise InputError(
                f"direction {self.name or ''!r} was made from {self.model}, not {model_name}: the axes of one "
                f"model's residual stream mean nothing in another. Make it again from {model_name}, or, if the "
                f"two are the same weights under another name, relabel it: lw.Direction(d.vector, model="
                f"{model_name!r}, layer=d.layer, name=d.name)"
            )

    # --- records (JSON) and files (safetensors) ---

    def to_dict(self) -> dict:
        """JSON-able and exact: the float32 values as base64 (a 4,096-wide direction is 22 kB)."""
        return {
            "vector_f32": base64.b64encode(self.vector.numpy().astype("<f4").tobytes()).decode("ascii"),
            "model": self.model,
            "layer": self.layer,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: Any) -> Direction:
        if isinstance(d, Direction):
            return d
        if not isinstance(d, dict) or not isinstance(d.get("vector_f32"), str):
            raise InputError(
                "a direction in a record is a dict with 'vector_f32' (from Direction.to_dict()); got "
                f"{type(d).__name__}"
            )
        try:
            raw = base64.b64decode(d["vector_f32"], validate=True)
        except ValueError:
            raise InputError("a direction's 'vector_f32' is not base64 text") from None
        if len(raw) % 4:
            raise InputError("a direction's 'vector_f32' does not hold whole float32 numbers")
        vector = torch.frombuffer(bytearray(raw), dtype=torch.float32)
        return cls(vector, model=d.get("model"), layer=d.get("layer"), name=d.get("name") or "")

    def save(self, path: str | Path) -> Path:
        """Write it as a safetensors file (the vector, and its model, layer and name as metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        checks.folder_exists(path, "the direction")
        metadata = {"format": FORMAT, "name": self.name, "width": str(len(self))}
        if self.model is not None:
            metadata["model"] = self.model
        if self.layer is not None:
            metadata["layer"] = str(self.layer)
        save_file({"direction": self.vector.contiguous()}, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        """A direction saved by `Direction.save` (any other file is refused, saying what it holds)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"no direction file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata, keys = f.metadata() or {}, list(f.keys())
                vector = f.get_tensor("direction") if "direction" in keys else None
        except (SafetensorError, OSError) as error:
            raise InputError(f"{path} is not a safetensors file: {error}") from None
        if metadata.get("format") != FORMAT or vector is None:
            raise InputError(
                f"{path} is not a direction saved by llm-widgets (Direction.save): it holds {keys[:5]} "
                f"with metadata {dict(list(metadata.items())[:5])}"
            )
        layer = metadata.get("layer")
        return cls(vector, model=metadata.get("model"), layer=int(layer) if layer else None, name=metadata["name"])


def as_direction(value: Any) -> Direction:
    """A Direction from what a SteerResidual was given: a Direction, its dict, a tensor or numbers."""
    if isinstance(value, Direction):
        return value
    if isinstance(value, dict):
        return Direction.from_dict(value)
    return Direction(value)


def finite_strength(value: Any) -> float:
    strength = checks.number(value, "SteerResidual strength", noun="a finite number (0 adds nothing)")
    return strength if strength != 0 else 0.0  # (-0.0 too)
