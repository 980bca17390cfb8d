"""`python -m eclipse_napari`: napari with the ECLIPSE widget docked and the sample scenes loaded."""

import argparse
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eclipse_napari", description=__doc__)
    p.add_argument("images", nargs="*", type=Path, help="images to open instead of the sample scenes")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped base model)")
    p.add_argument("--project", type=Path, default=None,
                   help="project folder where annotations and learned steps are saved "
                        "(default: ~/eclipse-napari/project, or $ECLIPSE_NAPARI_PROJECT)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores but one)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [str(p) for p in args.images if not p.exists()]
    if missing:
        raise SystemExit(f"not found: {', '.join(missing)}")
    import napari

    from .plugin.sample_data import make_sample_data
    from .plugin.widget import EclipseWidget

    viewer = napari.Viewer(title="ECLIPSE: learn new classes without forgetting")
    if args.images:
        for path in args.images:
            viewer.open(path)
    else:
        for data, kwargs, _ in make_sample_data():
            viewer.add_image(data, **kwargs)
    widget = EclipseWidget(viewer, model_folder=args.model, project_folder=args.project, threads=args.threads)
    viewer.window.add_dock_widget(widget, name="ECLIPSE", area="right")
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
