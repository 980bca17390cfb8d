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


def _distance(a, b) -> float:
    """A cheap perceptual colour distance ("redmean" weighted RGB)."""
    r = (a[0] + b[0]) / 2
    d = [float(x) - float(y) for x, y in zip(a, b)]
    return ((2 + r / 256) * d[0] ** 2 + 4 * d[1] ** 2 + (2 + (255 - r) / 256) * d[2] ** 2) ** 0.5


def distinct_color(existing) -> tuple[int, int, int]:
    """The colour farthest from every colour in `existing` (of a fixed palette of hues, saturations and
    values): a new class never comes out looking like an old one."""
    import colorsys

    palette = [tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h / 36, s, v))
               for v in (0.95, 0.7) for s in (0.85, 0.55) for h in range(36)]
    existing = [tuple(c)[:3] for c in existing]
    if not existing:
        return default_color(0)
    return max(palette, key=lambda c: min(_distance(c, e) for e in existing))


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
