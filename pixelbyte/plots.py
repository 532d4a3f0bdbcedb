"""Plots: every function returns a ``matplotlib.figure.Figure`` (built directly, so never registered
with pyplot and never leaked) and never calls ``plt.show()``; scripts save it with ``save_figure``.
No backend is chosen here: headless scripts call ``matplotlib.use("Agg")`` themselves."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .tokenizer import BYTE_TOKENS, FIRST_COLOUR_ID, PALETTE, VOCAB_SIZE, centre_ids, decode, is_colour


def _finish(fig: Figure, title=None, legend_ax=None, grid=False, layout=None, **title_kw) -> Figure:
    """The end of a plot: light grids, a legend outside ``legend_ax`` (if given), the title, a tight layout."""
    for ax in fig.axes if grid else ():
        ax.grid(alpha=0.3)
    if legend_ax is not None:
        legend_ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    if title:
        fig.suptitle(title, **title_kw)
    fig.tight_layout(**(layout or {}))
    return fig


def _as_array(image) -> np.ndarray:
    """PIL image or array -> (H, W, 3|4) uint8 array for imshow."""
    if hasattr(image, "convert") and not isinstance(image, np.ndarray):
        image = image.convert("RGBA" if image.mode in ("RGBA", "LA", "PA") else "RGB")
    return np.asarray(image)


def sprite_grid(images, captions=None, ncols: int = 8, scale: float = 1.3, title: str | None = None,
                wrap: int = 20, fontsize: float = 6.0, max_lines: int = 4) -> Figure:
    """Sprites (PIL images or (H, W, 3|4) uint8 arrays) in a grid of crisp pixels, each captioned
    beneath (``wrap`` characters per line, at most ``max_lines`` lines)."""
    images = list(images)
    if captions is not None:
        captions = list(captions)
        if len(captions) != len(images):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
    n = len(images)
    ncols = max(1, min(ncols, n)) if n else 1
    nrows = max(1, -(-n // ncols))
    text_h = 0.16 * max_lines * fontsize / 6.0 if captions else 0.0  # inches per row for captions
    fig = Figure(figsize=(ncols * scale, nrows * (scale + text_h) + (0.4 if title else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(_as_array(images[i]), interpolation="nearest")
        if captions is not None and captions[i]:
            lines = textwrap.wrap(str(captions[i]), wrap)
            text = "\n".join(lines[:max_lines]) + ("..." if len(lines) > max_lines else "")
            ax.text(0.5, -0.04, text, transform=ax.transAxes, ha="center", va="top", fontsize=fontsize, wrap=False)
    return _finish(fig, title, layout=dict(h_pad=0.2, w_pad=0.3), fontsize=10)


def save_figure(fig: Figure, path, dpi: int = 150) -> Figure:
    """Save ``fig`` as PNG at ``path`` (folders created); returns it, so a notebook cell shows it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", format="png", facecolor="white")
    return fig


def palette() -> Figure:
    """The 55 NES colours with their token ids."""
    ncols = 11
    fig = Figure(figsize=(ncols * 0.7, 5 * 0.7 + 0.4))
    ax = fig.subplots()
    grid = np.full((5, ncols, 3), 255, np.uint8)
    grid.reshape(-1, 3)[:len(PALETTE)] = PALETTE
    ax.imshow(grid, interpolation="nearest")
    for i, rgb in enumerate(PALETTE):
        r, c = divmod(i, ncols)
        dark = rgb.astype(int) @ [299, 587, 114] < 128_000
        ax.text(c, r, str(FIRST_COLOUR_ID + i), ha="center", va="center", fontsize=7,
                color="white" if dark else "black")
    ax.set_axis_off()
    ax.set_title("NES palette: colour token ids 58..112")
    return fig


def length_histogram(lengths) -> Figure:
    """Histograms of tokens per item, all and by modality (keys tokens, pixel_tokens, text_tokens)."""
    fig = Figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2)
    axes[0].hist(lengths["tokens"], bins=40, color="tab:blue")
    axes[0].set(title="Tokens per item", xlabel="tokens", ylabel="items")
    axes[1].hist([lengths["pixel_tokens"], lengths["text_tokens"]], bins=40, label=["pixels", "text"],
                 color=["tab:green", "tab:orange"])
    axes[1].set(title="Tokens per item by modality", xlabel="tokens", ylabel="items")
    axes[1].legend()
    return _finish(fig)


def _token_label(token_id: int) -> str:
    if token_id >= FIRST_COLOUR_ID:
        return f"c{token_id}"
    return {0: "pad", 1: "\\t", 2: "\\n", 3: "' '"}.get(token_id, BYTE_TOKENS[token_id].decode("latin-1"))


def token_frequencies(token_ids, top: int = 40) -> Figure:
    """Bar chart of the ``top`` most frequent tokens; colour tokens drawn in their colour."""
    counts = np.bincount(np.asarray(token_ids).ravel(), minlength=VOCAB_SIZE)
    order = np.argsort(-counts)[:top]
    colours = [PALETTE[t - FIRST_COLOUR_ID] / 255 if t >= FIRST_COLOUR_ID else (0.35, 0.35, 0.35) for t in order]
    fig = Figure(figsize=(10, 3.2))
    ax = fig.subplots()
    ax.bar(range(len(order)), counts[order] / counts.sum(), color=colours, edgecolor="black", linewidth=0.4)
    ax.set_xticks(range(len(order)), [_token_label(int(t)) for t in order], rotation=90, fontsize=7)
    ax.set(title=f"The {len(order)} most frequent tokens (grey: bytes, coloured: pixels)",
           xlabel="token", ylabel="share of all tokens")
    return _finish(fig)


def _window_rgb(window: np.ndarray) -> np.ndarray:
    """(3, 3) token window -> (3, 3, 3) RGB; bytes light grey, empty cells dark."""
    rgb = np.full((3, 3, 3), 40, np.uint8)
    for (r, c), t in np.ndenumerate(window):
        if t >= FIRST_COLOUR_ID:
            rgb[r, c] = PALETTE[t - FIRST_COLOUR_ID]
        elif t > 0:
            rgb[r, c] = 215
    return rgb


def context_windows(sequence: np.ndarray, n: int = 6, seed: int = 0) -> Figure:
    """One item's sprite with ``n`` random pixel tokens (not in its first row) marked, and each one's 3x3 window."""
    ids = centre_ids(sequence)
    image = next(s.image for s in decode(ids) if s.kind == "image")
    img_start, row_length = int(np.argmax(ids == 2)) + 1, image.shape[1] + 1   # rows end with \t
    body = ids[img_start:img_start + image.shape[0] * row_length]
    candidates = [i for i in range(row_length, len(body)) if is_colour(body[i])]     # not in the first row
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(candidates, size=min(n, len(candidates)), replace=False))
    fig = Figure(figsize=(3 + 1.6 * len(picked), 3.2))
    axes = fig.subplots(1, len(picked) + 1, gridspec_kw={"width_ratios": [2] + [1] * len(picked)})
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("sprite")
    box = dict(fill=False, edgecolor="red", linewidth=1.2)          # marks a token
    for k, i in enumerate(picked):
        r, c = divmod(i, row_length)
        axes[0].add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, **box))
        axes[0].text(c, r, str(k + 1), ha="center", va="center", fontsize=6, color="red")
        win = sequence[img_start + i].copy()
        axes[k + 1].imshow(_window_rgb(win), interpolation="nearest")
        axes[k + 1].add_patch(Rectangle((0.5, 0.5), 1, 1, **box))
        for (rr, cc), t in np.ndenumerate(win):
            axes[k + 1].text(cc, rr, _token_label(int(t)) if t else "0", ha="center", va="center",
                             fontsize=6, color="red" if (rr, cc) == (1, 1) else "black")
        axes[k + 1].set_title(f"token {k + 1}", fontsize=8)
    for ax in axes:
        ax.set(xticks=[], yticks=[])
    return _finish(fig, "Causal 3x3 context: row above + left; right and below are always 0", fontsize=9)


def training_curves(metrics, title: str = "Training") -> Figure:
    """Loss, accuracy and per-modality accuracy vs step, train vs val, from the trainer's metrics.csv."""
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3)
    styles = {"train": dict(color="tab:blue", alpha=0.6), "val": dict(color="tab:red", marker="o")}
    for split, style in styles.items():
        rows = metrics[metrics["split"] == split]
        if rows.empty:
            continue
        axes[0].plot(rows["step"], rows["loss"], label=split, **style)
        axes[1].plot(rows["step"], rows["accuracy"], label=split, **style)
        for column, ls in (("acc_text", "--"), ("acc_pixel", ":")):
            axes[2].plot(rows["step"], rows[column], ls=ls, label=f"{split} {column[4:]}", **style)
    axes[0].set(title="Cross-entropy loss", xlabel="optimizer step", ylabel="nats per token")
    axes[1].set(title="Next-token accuracy", xlabel="optimizer step", ylabel="accuracy")
    axes[2].set(title="Accuracy by modality", xlabel="optimizer step", ylabel="accuracy")
    for ax in axes:
        ax.legend(fontsize=7)
    return _finish(fig, title, grid=True)


# Model comparison (notebook 04)
FAMILY_COLOURS = {"rnn": "Blues", "ssm": "Greens", "att": "Reds"}   # a colour map per family
OBJECTIVE_STYLES = {"next": "-", "causal": "--"}


def _family_colours(runs, families) -> dict:
    """run -> colour: shades of its family's colour map, one per run of that family."""
    colours = {}
    for family in dict.fromkeys(families):
        members = [r for r, f in zip(runs, families) if f == family]
        cmap = colormaps[FAMILY_COLOURS.get(family, "Greys")]
        for k, run in enumerate(members):
            colours[run] = cmap(0.45 + 0.5 * k / max(1, len(members) - 1))
    return colours


def validation_curves(histories, title: str = "Validation loss of every run") -> Figure:
    """Validation loss of all runs (``compare.Comparison.histories``) against steps and wall time.
    Colour = family, solid = ``next``, dashed = ``causal`` (a loss over every position: not comparable)."""
    val = histories[histories["split"] == "val"]
    runs = list(dict.fromkeys(val["run"]))
    families = [val.loc[val["run"] == r, "family"].iloc[0] for r in runs]
    colours = _family_colours(runs, families)
    fig = Figure(figsize=(13, 4.8))
    axes = fig.subplots(1, 2)
    for run in runs:
        rows = val[val["run"] == run]
        style = dict(color=colours[run], ls=OBJECTIVE_STYLES.get(rows["objective"].iloc[0], ":"),
                     marker=".", lw=1.3, label=run)
        axes[0].plot(rows["step"], rows["loss"], **style)
        axes[1].plot(rows["wall_time"], rows["loss"], **style)
    axes[0].set(title="against optimizer steps", xlabel="optimizer step", ylabel="validation loss (nats per token)")
    axes[1].set(title="against training wall time", xlabel="wall time (s, validation included)",
                ylabel="validation loss (nats per token)")
    return _finish(fig, title, legend_ax=axes[1], grid=True)


def metric_bars(summary, metrics=("hamming", "cosine", "bleu"),
                title: str = "Paper metrics on held-out items (mean +- std over chunks)") -> Figure:
    """Each metric's mean +- std (``compare.bar_summary``) as horizontal bars: model runs coloured by
    family, trivial baselines grey and hatched at the bottom (a dashed line marks the best)."""
    summary = summary.reset_index(drop=True)
    is_base = (summary["family"] == "baseline").to_numpy()
    colours = _family_colours(list(summary["method"][~is_base]), list(summary["family"][~is_base]))
    order = list(summary.index[~is_base]) + list(summary.index[is_base])
    y = np.arange(len(order))[::-1]
    fig = Figure(figsize=(4.2 * len(metrics) + 2.5, 0.28 * len(order) + 1.6))
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for yy, i in zip(y, order):
            row = summary.loc[i]
            base = row["family"] == "baseline"
            ax.barh(yy, row[f"{metric}_mean"], xerr=row[f"{metric}_std"], height=0.75,
                    color="0.8" if base else colours[row["method"]], hatch="//" if base else None,
                    edgecolor="0.35", linewidth=0.5, error_kw=dict(lw=0.8, capsize=2, ecolor="0.25"))
        lower = metric.startswith("hamming")
        if is_base.any():                                  # the line a model has to beat
            values = summary.loc[is_base, f"{metric}_mean"]
            i = values.idxmin() if lower else values.idxmax()
            ax.axvline(values[i], color="0.3", ls="--", lw=1, label=f"best baseline ({summary.loc[i, 'method']})")
            ax.legend(fontsize=7, loc="lower right")
        ax.set(title=f"{metric} ({'lower' if lower else 'higher'} is better)", xlabel=metric)
        ax.set_xlim(left=0)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [summary.loc[i, "method"] for i in order], fontsize=7)
    return _finish(fig, title)


def sprite_rows(rows: dict, references=None, captions=None, scale: float = 1.2, title: str | None = None) -> Figure:
    """One labelled row of sprites per ``rows`` entry ({label: [image or None per column]}), under
    optional ``references``; ``captions`` (one per column) go above the first row."""
    labelled = ([("reference", list(references))] if references is not None else []) + \
        [(label, list(images)) for label, images in rows.items()]
    ncols = max(len(images) for _, images in labelled)
    fig = Figure(figsize=(ncols * scale + 2.2, len(labelled) * scale + (0.9 if captions else 0.2)))
    axes = fig.subplots(len(labelled), ncols, squeeze=False)
    for r, (label, images) in enumerate(labelled):
        for c, ax in enumerate(axes[r]):
            ax.set(xticks=[], yticks=[])
            ax.spines[:].set_visible(False)
            if c < len(images) and images[c] is not None:
                ax.imshow(_as_array(images[c]), interpolation="nearest")
            if r == 0 and captions is not None and c < len(captions):
                ax.set_title("\n".join(textwrap.wrap(str(captions[c]), 22)[:3]), fontsize=6)
        lines = [w for part in str(label).replace("/", "\n").splitlines() for w in textwrap.wrap(part, 34)]
        axes[r][0].set_ylabel("\n".join(lines), fontsize=7, rotation=0, ha="right", va="center", labelpad=6)
    return _finish(fig, title, fontsize=10)


# The copy skill (notebook 05)
COPY_COLOURS = {"lstm": "tab:blue", "attention": "tab:red", "bysmamba": "tab:green"}


def copy_examples(examples: dict) -> Figure | None:
    """The image and sprite copies among ``examples`` ({task: copying.CopyItem}), prompt then copy;
    None when there is none."""
    images, names = [], []
    for task, item in examples.items():
        if task in ("image", "sprite"):
            images += [s.image for s in decode(item.ids) if s.kind == "image"]
            names += ["image: top half the prompt, bottom half the copy"] if task == "image" else \
                ["sprite: in the prompt", "sprite: the copy"]
    return sprite_grid(images, names, ncols=4, scale=1.6,
                       title="Image and sprite copies: the prompt's image, then the copy") if images else None


def copy_curves(curves, sweeps, tasks: dict, families) -> Figure:
    """Greedy copy accuracy (``copying.Study``'s) against steps, a panel per task: token (solid), exact
    (dashed) and for sprites pixel accuracy (dotted) per family, the best trivial baseline in grey."""
    baseline_at = sweeps[(sweeps["method"] != "model") & (sweeps["factor"] == 1)].groupby("task")[
        ["token_accuracy", "sequence_accuracy", "pixel_accuracy"]].max()
    fig = Figure(figsize=(4.2 * len(tasks), 3.6))
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, (t, task) in zip(axes, tasks.items()):
        for family in families:
            rows = curves[(curves["family"] == family) & (curves["task"] == t)]
            colour = COPY_COLOURS[family]
            ax.plot(rows["step"], rows["token_accuracy"], color=colour, marker=".", label=f"{family} token")
            ax.plot(rows["step"], rows["sequence_accuracy"], color=colour, ls="--", label=f"{family} exact")
            if t == "sprite":
                ax.plot(rows["step"], rows["pixel_accuracy"], color=colour, ls=":", label=f"{family} pixel")
        ax.axhline(baseline_at.loc[t, "token_accuracy"], color="grey", lw=1, label="best baseline, token")
        if t == "sprite":
            ax.axhline(baseline_at.loc[t, "pixel_accuracy"], color="grey", ls=":", lw=1, label="best baseline, pixel")
        ax.set(title=task.label, xlabel="optimizer step", ylabel="accuracy on held-out items", ylim=(-0.02, 1.02))
    return _finish(fig, "Copy accuracy against training steps (greedy generation)", legend_ax=axes[-1], grid=True)


def copy_sizes(sweeps, tasks: dict, families) -> Figure:
    """Copy accuracy against task size (length generalisation), a panel per task: token (solid) and
    exact (dashed) per family, the best baseline in grey, the trained size dotted."""
    from .copying import SIZE_NAMES

    fig = Figure(figsize=(4.2 * len(tasks), 3.6))
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, (t, task) in zip(axes, tasks.items()):
        rows = sweeps[sweeps["task"] == t]
        for family in families:
            own = rows[(rows["family"] == family) & (rows["method"] == "model")]
            colour = COPY_COLOURS[family]
            ax.plot(own["size"], own["token_accuracy"], color=colour, marker="o", label=f"{family} token")
            ax.plot(own["size"], own["sequence_accuracy"], color=colour, marker="o", ls="--", label=f"{family} exact")
        best = rows[rows["method"] != "model"].groupby("size")["token_accuracy"].max()
        ax.plot(best.index, best.values, color="grey", marker="x", lw=1, label="best baseline, token")
        ax.axvline(task.size, color="black", lw=0.8, ls=":")
        ax.set(title=task.kind, xlabel=SIZE_NAMES[t], ylabel="accuracy on held-out items", xscale="log",
               ylim=(-0.02, 1.02))
        ax.minorticks_off()
        sizes = sorted(rows["size"].unique())
        ax.set_xticks(sizes, [str(s) for s in sizes])
    return _finish(fig, "Copy accuracy against task size (trained at the dotted line)", legend_ax=axes[-1], grid=True)
