"""What the web app draws from a job snapshot: heat maps, saliency, the mask, losses, tables.

Every function reads immutable values (a `JobSnapshot` and what it holds) and returns
numpy images, strings or table rows, so any thread may call it. Figures are cached by
what they show (run, step, selectors), so a page that polls every second redraws only
when the job moved.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on servers; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from .attention import cross_attention_layers  # noqa: E402
from .jobs import JobSnapshot, LivePreview, Panel, RunSummary  # noqa: E402
from .methods import ENDED  # noqa: E402
from .models import DiffusionModel  # noqa: E402
from .neurons import projection_kind  # noqa: E402
from .visualize import overlay, to_uint8  # noqa: E402

METRIC_COLUMNS = ("UA", "IRA", "CRA", "ASR_paraphrase", "ASR_embedding")
LOSS_NAMES = {"unlearn": "L_u", "cip": "CIP", "csr": "CSR", "pres": "preservation", "kv": "K/V kept"}


class _Memo:
    """A small thread-safe cache of drawings, newest kept."""

    def __init__(self, size: int = 64):
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, key: Hashable, make: Callable[[], object]) -> object:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # drawn outside the lock: viewers do not wait on each other
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


_memo = _Memo()


def short_layer(param_name: str) -> str:
    """'down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight' -> 'down1.0 K'."""
    parts = param_name.split(".")
    stage = parts[0].removesuffix("_blocks").removesuffix("_block")
    where = f"{stage}{parts[1]}.{parts[3]}" if parts[0] != "mid_block" else f"mid.{parts[2]}"
    return f"{where} {projection_kind(param_name).removeprefix('to_').upper()}"


def short_attention_layer(layer: str) -> str:
    """'up_blocks.1.attentions.2.transformer_blocks.0.attn2' -> 'up1.2'."""
    return short_layer(f"{layer}.to_k.weight").removesuffix(" K")


def _to_array(fig: plt.Figure) -> np.ndarray:
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


# --- live cross-attention heat maps ---

def heat_gallery(snapshot: JobSnapshot, layer: str | None = None, step_idx: int | None = None,
                 size: int = 160) -> list[tuple[np.ndarray, str]]:
    """The live preview, then its heat map for each word of the prompt (one layer or all; one step or all)."""
    preview = snapshot.preview

    def draw() -> list[tuple[np.ndarray, str]]:
        word_idx = list(range(1, len(preview.tokens) - 1))
        layers = [layer] if layer else None
        steps = [step_idx] if step_idx is not None else None
        maps = preview.heat_maps.token_maps(0, word_idx, layers, steps) if word_idx else []
        title = "original model" if preview.step == 0 else f"training step {preview.step}"  # (not a denoising step)
        items = [(to_uint8(preview.image, size), f"{title}: {preview.verdict or 'sample'}")]
        items += [(overlay(preview.image, heat, size), preview.tokens[i]) for i, heat in zip(word_idx, maps)]
        return items

    return _memo.get(("heat", snapshot.run_idx, preview.step, layer, step_idx, size), draw)


def layer_choices(model: DiffusionModel) -> list[tuple[str, str]]:
    """(label, layer name) of every cross-attention layer, after an "all layers" choice."""
    layers = cross_attention_layers(model.unet)
    return [("all layers", "all")] + [(short_attention_layer(name), name) for name in layers]


def timestep_choices(preview: LivePreview | None) -> list[tuple[str, int]]:
    """(label, index) of each recorded denoising step of a preview."""
    if preview is None:
        return []
    return [(f"step {k + 1} (t={t})", k) for k, t in enumerate(preview.heat_maps.timesteps)]


# --- saliency and the mask: numpy grids with PIL labels (a matplotlib figure costs ~0.4 s a draw) ---

_FONT_SIZE = 11
_ROW = 14  # pixels per weight row
_LEFT = 78  # pixels for the row labels


FIGURES_KEPT_SECONDS = 30 * 60  # a figure file older than this goes (Gradio has its own copy by then)


def figure_file(picture: np.ndarray, folder: Path) -> str:
    """A picture (H, W, 3) uint8 as a PNG in `folder`, named by its content, written once (whole, by a rename)
    and never rewritten. Handed a picture, Gradio writes its cached copy again each time any page is sent it,
    truncating the file under a page that is still downloading it (a broken image, and "Too little data for
    declared Content-Length" in the log); a file it copies once, by a rename too."""
    digest = hashlib.sha1(str(picture.shape).encode() + np.ascontiguousarray(picture).tobytes()).hexdigest()[:24]
    path = folder / f"{digest}.png"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{digest}.{threading.get_ident()}.part"
        Image.fromarray(picture).save(partial, format="PNG", compress_level=1)
        os.replace(partial, path)
        if int(digest[:2], 16) == 0:  # now and then (1 in 256 new figures), forget the old ones
            old = time.time() - FIGURES_KEPT_SECONDS
            for stale in folder.glob("*.png"):
                if stale.stat().st_mtime < old:
                    stale.unlink(missing_ok=True)
    return str(path)


@functools.cache
def _font() -> ImageFont.FreeTypeFont:
    """DejaVu Sans, shipped with matplotlib: it has τ, ρ and −, which PIL's default font lacks."""
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), _FONT_SIZE)


def _neuron_grid(values: dict[str, np.ndarray], fill: float) -> np.ndarray:
    """(weights, widest weight) matrix of per-neuron values, rows in forward order, padded with `fill`."""
    width = max(len(v) for v in values.values())
    grid = np.full((len(values), width), fill, dtype=np.float32)
    for row, v in enumerate(values.values()):
        grid[row, : len(v)] = v
    return grid


def _draw_grid(colors: np.ndarray, labels: list[str], title: str, marks: np.ndarray | None = None,
               footer: np.ndarray | None = None, footer_text: list[tuple[float, str]] = ()) -> np.ndarray:
    """Cells (rows, cols, 3) uint8 as a labelled picture; `marks` (rows, cols) bool get a black dot.

    `footer` is a colour strip (cols', 3) drawn under the grid with `footer_text` at (fraction, text).
    """
    rows, cols = colors.shape[:2]
    cell = max(1, min(10, 720 // cols))
    cells = np.repeat(np.repeat(colors, _ROW, axis=0), cell, axis=1)  # (rows * _ROW, cols * cell, 3)
    if marks is not None:
        dot = np.zeros((_ROW, cell), bool)
        dot[_ROW // 2 - 2 : _ROW // 2 + 2, max(0, cell // 2 - 2) : cell // 2 + 2] = True
        cells[np.kron(marks, dot)] = 0
    cells[::_ROW] = 255  # a thin white line between weights
    font = _font()
    width = max(_LEFT + cells.shape[1] + 8, int(font.getlength(title)) + 12)  # a small model's grid is narrow: the
    #                                                                            title is not cut to its width
    height = 22 + cells.shape[0] + (34 if footer is not None else 4)
    canvas = np.full((height, width, 3), 255, np.uint8)
    canvas[22 : 22 + cells.shape[0], _LEFT : _LEFT + cells.shape[1]] = cells
    if footer is not None:
        strip = np.repeat(footer[None], 10, axis=0)
        strip = np.asarray(Image.fromarray(strip).resize((cells.shape[1], 10), Image.NEAREST))
        canvas[26 + cells.shape[0] : 36 + cells.shape[0], _LEFT : _LEFT + cells.shape[1]] = strip
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    draw.text((4, 4), title, fill="black", font=font)
    for row, label in enumerate(labels):
        draw.text((4, 22 + row * _ROW + 1), label, fill="black", font=font)
    for fraction, text in footer_text:
        x = _LEFT + int(fraction * cells.shape[1])
        draw.line([(x, 24 + cells.shape[0]), (x, 38 + cells.shape[0])], fill="black", width=2)
        draw.text((max(0, x - 8), 38 + cells.shape[0]), text, fill="black", font=font)
    return np.asarray(picture)


# What a baseline trains in place of TRuST's cross-attention neurons: the saliency and mask figures say it
NO_NEURONS = {
    "esd-x": "ESD-x fine-tunes every cross-attention weight: it picks no neurons.",
    "esd-u": "ESD-u fine-tunes every weight outside cross-attention: it picks no neurons.",
    "salun": "SalUn trains the top ρ of all UNet weights by saliency, chosen once: single weights, not neurons.",
    "salun++": "SalUn++ trains the top ρ of all UNet weights by saliency, chosen every step: weights, not neurons.",
    "conceptprune": "ConceptPrune prunes feed-forward neurons once, with no steps: no cross-attention neurons.",
}


@functools.cache
def no_neurons_image(method: str) -> np.ndarray:
    """The saliency and mask figures of a method that selects no cross-attention neurons: why they are empty."""
    lines = [NO_NEURONS[method], "So there is no neuron saliency or mask to show: TRuST, TRuST+P and the ablations",
             "(trust-static, trust-no-cip, trust-no-csr) pick cross-attention neurons."]
    font = _font()
    width = max(int(font.getlength(line)) for line in lines) + 24
    top = 36  # below the corner where the page puts its full-screen and download buttons
    picture = Image.new("RGB", (width, top + 12 + 22 * len(lines)), "white")
    draw = ImageDraw.Draw(picture)
    for k, line in enumerate(lines):
        draw.text((12, top + 22 * k), line, fill=(60, 60, 60), font=font)
    return np.asarray(picture)


def saliency_image(snapshot: JobSnapshot) -> np.ndarray:
    """Every candidate neuron's saliency z-score this step (layer × neuron); selected ones dotted."""
    report, mask, config = snapshot.reports[-1], snapshot.mask, snapshot.config

    def draw() -> np.ndarray:
        z = {n: v.astype(np.float32) for n, v in report.saliency_z.items()}
        if not z:
            return _draw_grid(np.full((1, 1, 3), 255, np.uint8), [""], saliency_title(snapshot))
        grid = _neuron_grid(z, np.nan)
        limit = max(3.0, float(np.nanmax(np.abs(grid))))
        cmap = matplotlib.colormaps["RdBu_r"]
        colors = (cmap((np.nan_to_num(grid) + limit) / (2 * limit))[..., :3] * 255).astype(np.uint8)
        colors[np.isnan(grid)] = 255
        marks = _neuron_grid({n: mask.rows[n].numpy() for n in z}, 0) > 0 if mask is not None else None
        strip = (cmap(np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
        ticks = [(0.0, f"{-limit:.0f}"), (0.5, "0"), (1.0, f"{limit:.0f}")]
        if config.tau is not None:
            ticks.append(((config.tau + limit) / (2 * limit), f"τ={config.tau:g}"))
        return _draw_grid(colors, [short_layer(n) for n in z], saliency_title(snapshot), marks, strip, ticks)

    return _memo.get(("saliency", snapshot.run_idx, report.step), draw)


def saliency_title(snapshot: JobSnapshot) -> str:
    """What the saliency figure shows, in words: its title, and its text for a screen reader."""
    report, mask, config = snapshot.reports[-1], snapshot.mask, snapshot.config
    if not report.saliency_z:
        return f"step {report.step}: {config.method} computes no per-neuron saliency"
    rule = f"z > τ = {config.tau:g}" if config.tau is not None else f"the top ρ = {config.rho:g}"
    selected = f"{mask.num_selected} selected (dots): {rule}" if mask is not None else "no mask"
    return f"step {report.step}: saliency z-score of every neuron; {selected}"


MASK_COLORS = np.array([[255, 255, 255], [232, 232, 232], [40, 40, 40], [26, 152, 80], [215, 48, 39]], np.uint8)


def mask_image(snapshot: JobSnapshot, since_step: int | None = None) -> np.ndarray:
    """The mask now: kept (dark), added (green) and dropped (red) since `since_step`, else since the
    previous refresh."""
    step, now, before_step, before = _mask_pair(snapshot, since_step)

    def draw() -> np.ndarray:
        names = list(now.rows)
        state = {}
        for n in names:
            kept = now.rows[n].numpy()
            value = kept.astype(np.int8)  # 0 not selected, 1 selected
            if before is not None:
                value = value + (kept & ~before.rows[n].numpy()) + 3 * (~kept & before.rows[n].numpy())
            state[n] = value
        grid = _neuron_grid(state, -1).astype(int) + 1  # 0 no neuron, 1 off, 2 kept, 3 added, 4 dropped
        return _draw_grid(MASK_COLORS[grid], [short_layer(n) for n in names], mask_title(snapshot, since_step))

    return _memo.get(("mask", snapshot.run_idx, step, before_step), draw)


def _mask_pair(snapshot: JobSnapshot, since_step: int | None) -> tuple:
    """(step, mask) now and (step, mask) it is compared with: the last at or before `since_step`, else the
    previous refresh ((None, None) for none)."""
    masks = snapshot.masks
    step, now = masks[-1]
    earlier = [(s, m) for s, m in masks[:-1] if since_step is None or s <= since_step]
    return (step, now, *(earlier[-1] if earlier else (None, None)))


def mask_title(snapshot: JobSnapshot, since_step: int | None = None) -> str:
    """What the mask figure shows, in words: its title, and its text for a screen reader."""
    step, now, before_step, before = _mask_pair(snapshot, since_step)
    title = f"mask at step {step}: {now.num_selected} neurons (dark)"
    if before is not None:
        added, dropped = now.churn(before)
        title += f"; since step {before_step}: +{added} (green), −{dropped} (red)"
    return title


# --- losses, mask sizes, probe, progress ---

CURVES_EVERY = 5  # steps between redraws of the loss curves while a job steps


class _Plain(LogFormatterSciNotation):
    """Log-axis tick labels as plain numbers (0.6, 0.02, 3e+02), on the ticks matplotlib would label."""

    def __call__(self, x, pos=None) -> str:
        return f"{x:.2g}" if super().__call__(x, pos) else ""


def curves_image(snapshot: JobSnapshot) -> np.ndarray:
    """Left: L_u, CIP, CSR (and preservation, when on) per step, with the probe's UA.
    Right: selected neurons per layer over the steps.

    While the job steps, the figure moves every CURVES_EVERY steps: one draw takes about 0.16 s of the
    GIL the job's thread needs too (README, CPU and GPU), and it is drawn once for every page."""
    reports = snapshot.reports
    if snapshot.state in ("running", "stopping") and len(reports) > CURVES_EVERY:
        reports = reports[: len(reports) // CURVES_EVERY * CURVES_EVERY]

    def draw() -> np.ndarray:
        steps = [r.step for r in reports]
        fig, (ax, ax3) = plt.subplots(1, 2, figsize=(10, 3.0), dpi=80)
        for key, label in LOSS_NAMES.items():
            values = np.array([r.losses.get(key, 0.0) for r in reports])
            if np.any(values > 0):  # (a zero has no place on a log scale: a gap, not a line off the chart)
                ax.plot(steps, np.where(values > 0, values, np.nan), label=label, linewidth=1.2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_Plain())  # 0.6, not 6 × 10⁻¹: a loss within one decade gets labels
        ax.yaxis.set_minor_formatter(_Plain(labelOnlyBase=False))  # between the decades, as wide as the margin
        ax.set_xlabel("step", fontsize=8)
        ax.set_title("losses (log scale)", fontsize=9, pad=16)
        probes = [(r.step, r.probe.ua) for r in reports if r.probe is not None]
        handles = ax.get_legend_handles_labels()
        if probes:
            ax2 = ax.twinx()
            ax2.plot(*zip(*probes), "ks--", markersize=4, linewidth=0.8, label="probe UA")
            ax2.set_ylim(-0.05, 1.05)
            ax2.set_ylabel("UA (target gone)", fontsize=8)
            handles = [a + b for a, b in zip(handles, ax2.get_legend_handles_labels())]
        # one row between the title and the plot: inside it, a legend covered a line or a probe's point
        ax.legend(*handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(handles[0]), fontsize=7,
                  frameon=False, borderaxespad=0.1, handlelength=1.5, columnspacing=1.0)
        names = list(reports[-1].mask_sizes)
        counts = np.array([[r.mask_sizes.get(n, 0) for n in names] for r in reports]).T
        if counts.size:
            ax3.stackplot(steps, counts, labels=[short_layer(n) for n in names],
                          colors=plt.cm.tab20(np.linspace(0, 1, len(names))))
            ax3.legend(fontsize=6, ncol=1 if len(names) <= 10 else 2, loc="upper left", bbox_to_anchor=(1.01, 1),
                       borderaxespad=0)  # (two columns only where one would run off the bottom)
        else:  # a baseline: say why the axis is empty
            ax3.text(0.5, 0.5, f"{snapshot.method} selects no neurons", ha="center", va="center",
                     transform=ax3.transAxes, fontsize=8, color="0.35")
            ax3.set_yticks([])
            ax3.set_xlim(steps[0], max(steps[-1], steps[0] + 1))  # the run's steps, as on the left
        ax3.set_xlabel("step", fontsize=8)
        ax3.set_title("selected neurons per layer", fontsize=9)
        for axis in fig.axes:
            axis.tick_params(which="both", labelsize=7)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole (not 1.25, 1.5 early on)
        fig.subplots_adjust(left=0.06, right=0.84, bottom=0.16, top=0.84, wspace=0.3)
        return _to_array(fig)

    return _memo.get(("curves", snapshot.run_idx, len(reports)), draw)


def curves_text(snapshot: JobSnapshot) -> str:
    """What the curves figure shows, in words (for a screen reader): the last step's losses, the last probe and
    the mask's size."""
    last = snapshot.reports[-1]
    losses = ", ".join(f"{label} {last.losses[key]:.3g}" for key, label in LOSS_NAMES.items()
                       if last.losses.get(key, 0) > 0)
    text = f"Losses over {len(snapshot.reports)} steps, on a log scale; at step {last.step}: {losses or 'none'}."
    if probes := [r for r in snapshot.reports if r.probe is not None]:
        text += f" The probe found UA {probes[-1].probe.ua:.2f} at step {probes[-1].step}."
    if last.mask_sizes:
        top = max(last.mask_sizes, key=last.mask_sizes.get)
        text += (f" {sum(last.mask_sizes.values())} neurons selected at step {last.step}, the most in "
                 f"{short_layer(top)} ({last.mask_sizes[top]}).")
    else:
        text += " No neurons are selected: this method picks none."
    return text


def probe_text(snapshot: JobSnapshot) -> str:
    """The detector probe's latest verdict, in words."""
    probes = [r for r in snapshot.reports if r.probe is not None]
    if not probes and not snapshot.running:
        return "No probe ran in this job." if snapshot.state != "idle" else ""
    if not probes:
        return "The probe has not run yet (it samples the target every few steps)."
    last = probes[-1]
    ira = f", neighbours kept in {last.probe.ira:.0%}" if last.probe.ira is not None else ""
    return (f"Probe at step {last.step}: the target is gone from {last.probe.ua:.0%} of "
            f"{last.probe.num_samples} samples{ira}.")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def progress_html(snapshot: JobSnapshot, now: float) -> str:
    """A progress bar with steps, elapsed time and the estimated time left."""
    s = snapshot
    if s.state == "idle":
        return f"<div class='trust-progress'>{html.escape(s.message)}</div>"
    elapsed = now - s.started_at if s.running else (s.ended_at - s.started_at if s.ended_at else s.elapsed)
    trains = s.method != "conceptprune"  # ConceptPrune prunes once: it has no steps to count
    parts = [f"<b>{s.state}</b>", f"step {s.step} of {s.max_steps}" if trains else "one pruning pass",
             f"{_duration(elapsed)} elapsed"]
    if s.state == "running" and s.eta_seconds is not None:
        parts.append(f"about {_duration(s.eta_seconds)} left at most")
    value, most = (s.step, max(1, s.max_steps)) if trains else (int(s.state in ("done", "failed")), 1)
    return (f"<div class='trust-progress'><progress value='{value}' max='{most}' aria-label='progress of the job' "
            f"style='width:100%'></progress><div>{' · '.join(parts)}</div>"
            f"<div><i>{html.escape(s.message)}</i></div></div>")


# --- the end of a run ---

def panel_gallery(panels: tuple[Panel, ...]) -> list[tuple[np.ndarray, str]]:
    """Before/after pairs, same seed side by side, captioned with the detector's verdicts."""
    items = []
    for panel in panels:
        for k, (before, after) in enumerate(zip(panel.before, panel.after)):
            pair = np.concatenate([before, np.full((before.shape[0], 6, 3), 255, np.uint8), after], axis=1)
            verdict = ""
            if panel.before_verdicts:  # short enough for one caption line: "red circle → green circle"
                verdict = f": {_short(panel.before_verdicts[k])} → {_short(panel.after_verdicts[k])}"
            items.append((pair, f"{panel.role} “{panel.prompt}” #{k}{verdict}"))
    return items


def panel_html(panels: tuple[Panel, ...]) -> str:
    """Before/after pairs as a grid of captioned images: every pair and its verdicts in view at once, at any
    window width (a gallery clipped its later rows and hid captions)."""
    if not panels:
        return "<div class='trust-ba'><i>Before/after pairs appear here once a run is measured.</i></div>"
    figures = []
    for pair, caption in panel_gallery(panels):
        buffer = io.BytesIO()
        Image.fromarray(pair).save(buffer, format="PNG")
        source = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        figures.append(f"<figure style='margin:0'><img src='{source}' alt='{html.escape(caption, quote=True)}' "
                       "style='width:100%;image-rendering:pixelated'>"
                       f"<figcaption style='font-size:0.85em'>{html.escape(caption)}</figcaption></figure>")
    return ("<div class='trust-ba' style='display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));"
            f"gap:10px'>{''.join(figures)}</div>")


def _short(verdict: str) -> str:
    """A detector verdict without its confidence, and without the background when plain."""
    return verdict.split(" (")[0].removesuffix(", plain")


def _cell(value) -> str:
    return "—" if value is None else f"{value:.2f}"


ATTACK_COLUMNS = ("ASR_paraphrase", "ASR_embedding")


def metrics_rows(metrics: dict | None, pending: tuple[str, ...] = ()) -> list[list[str]]:
    """One row: UA, IRA, CRA and both ASRs ('—' where not measured, 'measuring…' where `pending`)."""
    metrics = metrics or {}
    return [["measuring…" if name in pending else _cell(metrics.get(name)) for name in METRIC_COLUMNS]]


def history_rows(history: tuple[RunSummary, ...]) -> list[list]:
    """One row per finished run, newest first, for comparing methods side by side; each row names its model
    where the runs are of more than one (`history_columns`)."""
    several = "model" in history_columns(history)
    return [[r.run_idx, *([r.model] if several else []), r.method, r.target, r.steps, f"{r.seconds:.1f}",
             ENDED.get(r.stop_reason, r.stop_reason), f"{100 * r.changed_fraction:.2f}%", *metrics_rows(r.metrics)[0]]
            for r in reversed(history)]


# "erase s": data, masks and steps (what bench and report.json call wall_seconds), without the measuring after
HISTORY_COLUMNS = ["run", "method", "target", "steps", "erase s", "ended", "weights changed", *METRIC_COLUMNS]


def history_columns(history: tuple[RunSummary, ...]) -> list[str]:
    """HISTORY_COLUMNS, with "model" after "run" where the runs are of more than one model."""
    return HISTORY_COLUMNS[:1] + ["model"] * (len({r.model for r in history}) > 1) + HISTORY_COLUMNS[1:]


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """Rows as a Markdown table: the page shows tables as Markdown, since two gr.Dataframes cost a page load
    about 0.45 s (README, App latency)."""
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(columns), "|" + "---|" * len(columns), *map(line, rows)])


def metrics_markdown(metrics: dict | None, pending: tuple[str, ...] = ()) -> str:
    return "**Metrics of the erased model**\n\n" + markdown_table(list(METRIC_COLUMNS), metrics_rows(metrics, pending))


def history_markdown(history: tuple[RunSummary, ...]) -> str:
    if not history:
        return "*No run has ended yet.*"
    return markdown_table(history_columns(history), history_rows(history))


def token_zoom(snapshot: JobSnapshot, token_pos: int, layer: str | None = None, step_idx: int | None = None,
               size: int = 320) -> tuple[np.ndarray, str]:
    """One word's heat map, large (what a click on a token shows); `token_pos` counts the prompt's words
    (-1: the last one)."""
    preview = snapshot.preview
    word_idx = list(range(1, len(preview.tokens) - 1))
    if not word_idx:
        return to_uint8(preview.image, size), "the prompt has no words"
    token_idx = word_idx[token_pos if -len(word_idx) <= token_pos < len(word_idx) else -1]

    def draw() -> np.ndarray:
        heat = preview.heat_maps.token_map(0, token_idx, [layer] if layer else None,
                                           [step_idx] if step_idx is not None else None)
        return overlay(preview.image, heat, size)

    key = ("zoom", snapshot.run_idx, preview.step, token_idx, layer, step_idx, size)
    return _memo.get(key, draw), preview.tokens[token_idx]
