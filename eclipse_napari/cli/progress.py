"""A terminal progress bar (tqdm) fed by the training engine's `Progress` updates."""

import sys

from model.training.progress import RunState


def progress_bar(rank: int = 0):
    """A callback drawing one bar per training step on stderr (None on ranks other than 0)."""
    if rank != 0:
        return None
    from tqdm import tqdm

    bars = {}

    def update(p) -> None:
        key = (p.step, p.total)
        bar = bars.get(key)
        if bar is None:
            bar = bars[key] = tqdm(total=p.total, desc=f"step {p.step}", leave=False, file=sys.stderr)
        bar.n = p.iteration
        bar.set_postfix(loss=f"{p.loss:.3f}", refresh=False)
        bar.refresh()
        if p.state != RunState.RUNNING:
            bar.close()
            bars.pop(key, None)

    return update
