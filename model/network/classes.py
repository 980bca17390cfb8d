"""What a class is to the model: a name, thing or stuff, and a display colour."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassSpec:
    name: str
    is_thing: bool
    color: tuple[int, int, int] = (128, 128, 128)

    def to_json(self) -> dict:
        return {"name": self.name, "is_thing": self.is_thing, "color": list(self.color)}

    @staticmethod
    def from_json(data: dict) -> "ClassSpec":
        return ClassSpec(str(data["name"]), bool(data["is_thing"]), tuple(int(c) for c in data["color"]))


def default_color(index: int) -> tuple[int, int, int]:
    """A deterministic, well-spread colour for the index-th class (golden-ratio hue steps)."""
    import colorsys

    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
    return (int(r * 255), int(g * 255), int(b * 255))


def make_classes(names, is_thing, colors=None, start_index: int = 0) -> list[ClassSpec]:
    """Validates parallel lists and builds ClassSpecs (colours default to `default_color`)."""
    names, is_thing = list(names), list(is_thing)
    if not names:
        raise ValueError("a step needs at least one class")
    if len(is_thing) != len(names):
        raise ValueError(f"got {len(names)} class names but {len(is_thing)} thing/stuff flags")
    if colors is None:
        colors = [default_color(start_index + i) for i in range(len(names))]
    colors = list(colors)
    if len(colors) != len(names):
        raise ValueError(f"got {len(names)} class names but {len(colors)} colours")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class names must be non-empty strings, got {name!r}")
    return [ClassSpec(n.strip(), bool(t), tuple(int(v) for v in c)) for n, t, c in zip(names, is_thing, colors)]
