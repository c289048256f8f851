"""TRuST web app: watch a concept being erased, live, in the browser.

    python app.py    # serves on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (default 127.0.0.1:7860)

Environment: TRUST_MODEL (default "shapes": the embedded model; or a local SD 1.x folder), TRUST_MODEL_DIRS
(folders, joined by ':', whose model folders the page may load; none by default),
TRUST_DEVICE (default: cuda when available), TRUST_APP_QUICK=1 (small jobs, for tests and demos).

The page lays out and wires components; the work lives in trust/: ModelService (the
model, loaded once, touched under a lock), JobRunner (one erase job per server, read
through immutable snapshots) and trust/panels.py (the figures).
"""

import os
import re
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from trust import panels
from trust.concepts import open_prompt_warnings
from trust.errors import TrustError, shorten
from trust.forms import (
    ADVANCED_FIELDS,
    SCENARIOS,
    config_from_form,
    derived_anchor_text,
    derived_neighbours_text,
    form_fields,
    image_seed,
    method_defaults,
    preset_fields,
    preset_of,
    scenario_from_form,
    used_fields,
)
from trust.jobs import LOADED, RESET, STOPPED_EARLY, JobBusyError, JobOptions, JobRunner, NotYoursError, target_label
from trust.methods import GOOD_UA, attack_caveat, damage  # ✅: a final UA ≥ GOOD_UA, nothing harmed
from trust.service import ModelService
from trust.shapes.world import said_unknown
from trust.unlearn import METHODS

QUICK = os.environ.get("TRUST_APP_QUICK") == "1"
# The page's first erase keeps the neighbours: TRuST+P (plain TRuST, the paper as we read it, is in the list;
# on the combination preset it loses "a red square" or "a blue circle" with the target)
DEFAULT_METHOD = "trust+p"
FIRST_PRESET = "combination"  # the scenario a page opens on
OPTIONS = JobOptions.quick() if QUICK else JobOptions()
HIDDEN_CONFIG = ({"num_train_images": 2, "batch_size": 2, "probe_samples": 2, "probe_steps": 4,
                  "hessian_samples": 1, "data_steps": 10, "retain_prompts": 2} if QUICK else {})
# each run's erase folder and zip (the latest few runs'); the app's own, removed when the server exits
_WORKDIR = tempfile.TemporaryDirectory(prefix="trust-app-")
WORKDIR = Path(_WORKDIR.name)

FIGURES = WORKDIR / "figures"  # every picture the page is sent, as a file written once (panels.figure_file)


def as_files(value):
    """A handler's output with its pictures (arrays, alone, in an update or in a gallery's (picture, caption)
    list) as files written once, so that no page ever downloads a picture while it is being rewritten."""
    if isinstance(value, np.ndarray):
        return panels.figure_file(value, FIGURES)
    if isinstance(value, dict) and "value" in value:  # gr.update(value=pictures, ...)
        return {**value, "value": as_files(value["value"])}
    if isinstance(value, list) and value and all(isinstance(item, tuple) and isinstance(item[0], np.ndarray)
                                                 for item in value):
        return [(panels.figure_file(picture, FIGURES), *rest) for picture, *rest in value]
    return value


# the page loads local model folders only from these (and the one it started with): its users type the names
MODEL_DIRS = tuple(d for d in os.environ.get("TRUST_MODEL_DIRS", "").split(os.pathsep) if d.strip())
service = ModelService(os.environ.get("TRUST_MODEL", "shapes"), device=os.environ.get("TRUST_DEVICE"),
                       model_dirs=MODEL_DIRS)
jobs = JobRunner(WORKDIR, on_result=lambda result: service.set_erased(result.unet, f"run {jobs.snapshot().run_idx}"))

EXPLAIN = {
    "heat": "**Cross-attention heat maps** of the model being edited, drawn again about once a second. Each "
            "pixel of the image asks the prompt's words what to draw; red means this pixel listens to this "
            "word, blue that it does not. As the concept is erased, the target's words stop steering their "
            "pixels. Click a word to see it large.",
    "saliency": "**Saliency.** A *neuron* is one row of a cross-attention key (K) or value (V) projection: the "
                "weights that turn the prompt's words into what the image attends to. Colour is how strongly "
                "the erasing loss pulls on that neuron this step (z-score: red pulls more than most, blue less); "
                "a black dot marks the selected ones, above the threshold τ (or among the top ρ): the mask, the "
                "only neurons fine-tuned this step.",
    "mask": "**The mask as it evolves.** TRuST re-estimates which neurons carry the concept while it erases "
            "it: dark neurons are selected now, green ones joined since this page last redrew, red ones left.",
    "curves": "**Losses and mask size.** L_u pushes the target's prediction towards the anchor; CIP silences "
              "the selected neurons' response to the target's words; CSR pulls back weights that other prompts "
              "depend on. The probe samples the target every few steps and stops the job once the detector no "
              "longer finds it. Right: how many neurons each layer contributes to the mask, step by step.",
}


# Tables scroll sideways on a narrow screen instead of squeezing their columns to a letter a line
CSS = """
#runs table, #metrics table { display: block; overflow-x: auto; max-width: 100%; }
#runs th, #runs td, #metrics th, #metrics td { white-space: nowrap; word-break: keep-all; }
/* A table wider than its box (PAGE_JS marks it) says that it scrolls */
#runs:has(table[data-wide])::after, #metrics:has(table[data-wide])::after {
    content: "↔ the table scrolls sideways"; display: block;
    font-size: var(--text-sm); color: var(--body-text-color-subdued); }
/* The field being typed in stands out, in the dark theme too (there its border kept its colour) */
input:focus-visible, textarea:focus-visible { outline: 2px solid var(--color-accent) !important; outline-offset: 1px; }
/* A gallery's label floats over its first row of pictures: room for it; and no blank box below the pictures */
.grid-wrap .grid-container { padding-top: 34px !important; }
.grid-wrap.fixed-height { height: auto !important; min-height: 0 !important; max-height: none !important; }
/* A field the chosen method does not read is locked; dim it too, or it looks like one that counts */
label:has(input[type=number]:disabled) { opacity: 0.45; }
/* On a phone the saliency, mask and curve figures would shrink to about 100 px tall, their words unreadable:
   they keep 640 px of width and scroll sideways, and say so */
@media (max-width: 640px) {
  #saliency .image-container, #mask .image-container, #curves .image-container { overflow-x: auto; }
  #saliency .image-container > button, #mask .image-container > button, #curves .image-container > button {
      justify-content: flex-start; }
  #saliency img, #mask img, #curves img { min-width: 640px; max-width: none; }
  #saliency:has(img)::after, #mask:has(img)::after, #curves:has(img)::after {
      content: "↔ the figure scrolls sideways, or opens full screen (top right)"; display: block;
      font-size: var(--text-sm); color: var(--body-text-color-subdued); padding: 0 6px 4px; }
}
/* On a phone or a tablet a gallery's columns (at least 100 px each) would run off its right edge: as many as fit;
   and a caption (a word, a verdict) wraps on its tile instead of ending in "…" */
@media (max-width: 1024px) {
  .grid-container { grid-template-columns: repeat(auto-fill, minmax(72px, 1fr)) !important; }
  .grid-container .caption-label { position: static; white-space: normal; overflow-wrap: anywhere;
                                   max-width: 100%; line-height: 1.15; }
  .grid-container .thumbnail-item { height: auto !important; }
}
"""

# For a screen reader: the message box is announced when it changes, and a gallery's tile by its caption (a word,
# a verdict), not as "Thumbnail 2 of 4". For the eye: a table wider than its box is marked (CSS above).
PAGE_JS = """
() => {
  const tidy = () => {
    const message = document.getElementById("message");
    if (message && !message.hasAttribute("aria-live")) {
      message.setAttribute("role", "status");
      message.setAttribute("aria-live", "polite");
    }
    // (Gradio's status tracker in it, unseen, changes its timer text with every tick: not a thing to read out)
    for (const tracker of document.querySelectorAll('#message [data-testid="status-tracker"]')) {
      if (!tracker.hasAttribute("aria-hidden")) tracker.setAttribute("aria-hidden", "true");
    }
    for (const tile of document.querySelectorAll(".thumbnail-item")) {
      const caption = tile.querySelector(".caption-label");
      const text = caption ? caption.textContent.trim() : "";
      if (text && tile.getAttribute("aria-label") !== text) tile.setAttribute("aria-label", text);
    }
    for (const table of document.querySelectorAll("#runs table, #metrics table")) {
      const wide = table.scrollWidth > table.clientWidth + 1;
      if (wide !== table.hasAttribute("data-wide")) table.toggleAttribute("data-wide", wide);
    }
  };
  new MutationObserver(tidy).observe(document.body, {childList: true, subtree: true, characterData: true,
                                                     attributes: true, attributeFilter: ["aria-label"]});
  window.addEventListener("resize", tidy);
  tidy();
}
"""


def model_info() -> str:
    model = service.model
    detector = "with its concept detector" if model.detector is not None else "without a concept detector"
    return f"Model **{model.name}** on {model.device}, {detector}."


def run_name(s) -> str:
    """A job as the messages name it: Run 3 (“a red circle”, trust+p)."""
    return f"Run {s.run_idx} (“{s.target}”, {s.method})"


# What a page's form holds, kept in its browser (localStorage) as the user types: a reload gives it back
DRAFT_FIELDS = ("targets", "anchor", "neighbours", "anchor_auto", "neighbours_auto", "method", *ADVANCED_FIELDS,
                "try_prompt", "try_seed")


def sendable(value):
    """A value as a reply can carry it: a whole number past 64 bits (1e20 typed: the browser sends its digits) as a
    float. As an int, Gradio's JSON encoder refused it, and the reply failed with a 500 (the field's own check
    refuses the number on Erase or Generate)."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63 else value


def on_draft(*values):
    """The form as the browser keeps it."""
    return {name: sendable(v) for name, v in zip(DRAFT_FIELDS, values)}


def draft_form(draft) -> dict | None:
    """The draft a browser sent back, if it is one this page wrote (any other value: None)."""
    if not isinstance(draft, dict) or set(draft) != set(DRAFT_FIELDS) or draft["method"] not in METHODS:
        return None
    texts = ("targets", "anchor", "neighbours", "try_prompt")
    if not all(isinstance(draft[k], str) for k in texts) or not all(
            draft[k] is None or isinstance(draft[k], str) for k in ("anchor_auto", "neighbours_auto")):
        return None
    numbers = (*ADVANCED_FIELDS, "try_seed")
    if not all(draft[k] is None or (isinstance(draft[k], int | float) and not isinstance(draft[k], bool))
               for k in numbers):
        return None
    return {k: sendable(v) for k, v in draft.items()}  # (the browser sends a stored 1e20 back as its digits)


def visitor_id(visitor) -> str:
    """This browser's id as its local storage keeps it, or a new one (the first visit, or a value not ours)."""
    return visitor if isinstance(visitor, str) and re.fullmatch(r"[0-9a-f]{16}", visitor) else secrets.token_hex(8)


def on_page_load(draft=None, visitor=None):
    """The model's line, name and layers, and the form: what this browser's page held before the reload (typed and
    not yet erased), else what the job running or shown was asked (so that the results below match it); last,
    this browser's visitor id (kept in its local storage: the jobs it starts are its own across reloads)."""
    layers = panels.layer_choices(service.model)
    s = jobs.snapshot()
    form = [gr.skip()] * (6 + len(ADVANCED_FIELDS))  # targets, anchor, neighbours, their autos, method, advanced
    tried = [gr.skip(), gr.skip()]  # Try a prompt's prompt and seed
    if (kept := draft_form(draft)) is not None:  # (the Runs table names the run the results below are of)
        used = used_fields(kept["method"])
        form = [kept["targets"], kept["anchor"], kept["neighbours"], kept["anchor_auto"], kept["neighbours_auto"],
                kept["method"], *(gr.update(value=kept[n], interactive=n in used) for n in ADVANCED_FIELDS)]
        tried = [kept["try_prompt"], kept["try_seed"]]
    elif s.scenario is not None and s.state != "idle":  # running, or ended and shown: the form it was asked
        targets_text, anchor_text, neighbours_text, *rest = form_fields(s.scenario, s.config)
        used = used_fields(s.config.method)
        try:  # the anchor keeps following the targets only if it is the one they derive (not one typed)
            auto = anchor_text if anchor_follow(targets_text) == anchor_text else None
        except ValueError:
            auto = None
        preset = preset_of(targets_text)  # (and so do the neighbours)
        neighbours_auto = neighbours_text if neighbours_follow(targets_text, preset) == neighbours_text else None
        form = [targets_text, anchor_text, neighbours_text, auto, neighbours_auto, rest[0],
                *(gr.update(value=v, interactive=n in used) for n, v in zip(ADVANCED_FIELDS, rest[1:]))]
    elif service.model.detector is None:  # the page's first form: the preset's prompts, with this model's anchor
        form[1] = form[3] = anchor_follow(preset_fields(FIRST_PRESET)[0])
    # a running job's message comes back too (an ended one's comes with the next tick)
    visitor = visitor_id(visitor)
    note = running_note(s, visitor) if s.running else gr.skip()
    held = service.local_models()  # (read at each page load: a folder placed since then shows)
    box = gr.update(value=service.name, info=f"This server's model folders hold: {', '.join(held)}" if held else None)
    return model_info(), box, gr.update(choices=layers, value="all"), *form, *tried, note, visitor


def running_note(s, visitor: str) -> str:
    """The message box of a page that did not press Erase for the running job."""
    whose = "" if not s.owner or s.owner == visitor else " (another visitor started it)"
    return f"{run_name(s)} is running{whose}; the live panels follow it."


def on_preset(preset):
    targets, _, neighbours = preset_fields(preset)
    anchor = anchor_follow(targets)
    return targets, anchor, neighbours, anchor, neighbours


def anchor_follow(targets: str) -> str:
    """The anchor filled in for the targets: each target's concept anchor where the model has ShapesWorld's grammar
    (its detector), else the empty prompt, as `trust erase` gives it (to Stable Diffusion "a green circle" is no
    scene with one attribute changed). ValueError where the targets name no concept."""
    return derived_anchor_text(targets, grammar=service.model.detector is not None)


def neighbours_follow(targets: str, preset: str | None) -> str:
    """The neighbours filled in for the targets (derived from ShapesWorld's grammar where the model has its
    detector, as `trust erase` does)."""
    return derived_neighbours_text(targets, preset, grammar=service.model.detector is not None)


def on_targets(targets, anchor, auto, neighbours, neighbours_auto, preset):
    """The Anchor and Neighbours boxes follow the targets while they hold what was filled in for them (not what
    the user typed); the Scenario radio shows the preset the targets are, none for a typed target.

    A box is written only where following the targets changes it. A reply may come late (Gradio re-sends this
    call while the user types in another box, with the values it read before), and a box written with the same
    text it held would undo what the user typed in it since. The radio is set only where it must change too: a
    reply that comes after the user picked another preset would otherwise put it back on the old one."""
    shown, preset = preset, preset_of(targets, preset)
    radio = gr.update() if preset == shown else preset
    if (neighbours or "").strip() == (neighbours_auto or "").strip():
        neighbours_auto = neighbours_follow(targets, preset)
        neighbours = _changed(neighbours, neighbours_auto)
    else:
        neighbours = gr.update()
    if (anchor or "").strip() != (auto or "").strip():
        return gr.update(), auto, neighbours, neighbours_auto, radio
    try:  # an emptied box, or targets that name no concept (one given twice, say): the anchor filled in for the
        #   last targets goes too, as it would be stale
        derived = anchor_follow(targets) if (targets or "").strip() else ""
    except ValueError:
        derived = ""
    return _changed(anchor, derived), derived, neighbours, neighbours_auto, radio


def _changed(shown: str | None, value: str):
    """`value` for a box that shows `shown`, or no update where it would write the same text (spaces at the ends
    aside: the box that follows reads them so, and a space just typed is kept)."""
    return gr.update() if (shown or "").strip() == value.strip() else value


def on_method(method):
    """The method's defaults in every advanced field; those it does not read are greyed out."""
    used = used_fields(method)
    return [gr.update(value=value, interactive=name in used)
            for name, value in zip(ADVANCED_FIELDS, method_defaults(method))]


def on_erase(visitor, mine, preset, targets, anchor, neighbours, method, *advanced):
    """Start a job as `visitor` (this browser). `mine` is the run this page started last, so that a second press
    while it runs says so (as it does after a reload, from the visitor), not "Busy" as if another user's job were
    running. Returns (message, the run this page started last)."""
    try:
        scenario = scenario_from_form(preset, targets, anchor, neighbours)
        config = config_from_form(method, *advanced, **HIDDEN_CONFIG)
        jobs.start(service.model, scenario, config, OPTIONS, owner=visitor or "")
    except JobBusyError as err:
        s = jobs.snapshot()
        if s.running and (s.run_idx == mine or (visitor and s.owner == visitor)):
            if s.scenario == scenario and time.time() - s.started_at < 3:  # a double click: the first one's note stays
                return gr.skip(), mine
            if s.state in ("stopping", "finishing"):  # (Stop has nothing left to do: it ends by itself)
                doing = "is stopping after its current step" if s.state == "stopping" else \
                    "has ended its steps and is being measured (a minute or two)"
                return f"⚠️ {run_name(s)}, which you started, {doing}; press Erase again once it has ended.", mine
            return (f"⚠️ {run_name(s)}, which you started, is still running; press Stop to end it before "
                    "starting another."), mine
        return f"⚠️ **Busy:** {err}.", mine
    except (TrustError, ValueError) as err:
        return f"❌ {err}", mine
    mine = jobs.snapshot().run_idx
    model = service.model
    note = ""
    if model.detector is not None:
        note = f" The detector checks the concept as {scenario.concept.describe()}."
    cut = [t for t in scenario.targets + scenario.neighbours if model.num_tokens(t) > model.max_tokens]
    if cut:
        note += (f" “{shorten(cut[0])}” is longer than the "
                 f"{model.max_tokens} tokens the model reads: its end was cut.")
    note += unknown_note(model, *scenario.targets, *scenario.neighbours)
    if model.detector is not None:
        note += "".join(f" ⚠️ {warning[0].upper()}{warning[1:]}." for warning in open_prompt_warnings(scenario))
    return f"Erasing “{target_label(scenario)}” with {config.method}; the live panels follow it.{note}", mine


def unknown_note(model, *prompts: str) -> str:
    """The sentence of Erase's and Try a prompt's notes that names words the model never trained on ("" if none)."""
    unknown = model.unknown_words(*prompts)
    return f" Words the model never trained on (what it draws for them is arbitrary): {said_unknown(unknown)}." if \
        unknown else ""


def on_stop(visitor=None):
    """Stop the job, if this visitor started it (or its starter has left)."""
    try:
        if jobs.stop(by=visitor or ""):
            return "Stopping after this step."
    except NotYoursError as err:
        return f"⚠️ {err}."
    s = jobs.snapshot()
    if s.state == "finishing":
        return "The job has ended its steps and is measuring the erased model; it ends by itself shortly."
    return "No job is running." if not s.running else "The job is already stopping."


def no_erased() -> dict:
    """Try a prompt's erased side once its model has gone (a new update each time: Gradio takes the value out of
    the one it is given, so a shared one cleared the pictures once only)."""
    return gr.update(value=None, label="Erased model")


def on_reset(visitor=None):
    """Back to the original model, if this visitor started the last run (or its starter has left); Try a prompt's
    erased side (pictures, heat maps, note) goes with the run."""
    try:
        jobs.reset(by=visitor or "")
    except (NotYoursError, JobBusyError) as err:
        return f"⚠️ {err}.", gr.skip(), gr.skip(), gr.skip()
    service.reset()
    return after_reset()


# What a page says after a Reset, its own or another page's (every page shows the same job)
RESET_MESSAGE = "Back to the original model: Try a prompt shows no erased model until the next run."
RESET_TRY_NOTE = "No erased model: Reset went back to the original. Erase to make one."


def after_reset() -> tuple:
    """The message and Try a prompt's erased pictures, heat maps and note, after a Reset."""
    return RESET_MESSAGE, no_erased(), None, RESET_TRY_NOTE


def on_load_model(name):
    """Load another model; on failure the box shows the model still in use again. Returns the message, the model
    line, the layers, the model box and Try a prompt's four galleries and note (cleared once another model is
    loaded: they showed the last one's pictures)."""
    def kept(message: str) -> tuple:  # nothing loaded: only the message and the model box change
        return (message, gr.skip(), gr.skip(), service.name, *(gr.skip(),) * 5)

    if not (name or "").strip():
        return kept("❌ Type a model to load: shapes (the embedded model), a hub id or an SD 1.x folder in the "
                    f"server's model folders. Still using {service.name}.")
    if jobs.snapshot().running:
        return kept("⚠️ **Busy.** A job is running; load another model when it has ended.")
    if name.strip() == service.name:  # (loading it again would drop the last run's erased model and export)
        return kept(f"Already using {service.name}; nothing changed.")
    before, shown = service.name, jobs.snapshot()
    try:
        service.load(name)
    except TrustError as err:
        return kept(f"❌ {str(err).rstrip('.')}. Still using {service.name}.")
    dropped = (f" Run {shown.run_idx}'s erased model belonged to {before} and is put away (its row stays in Runs)."
               if shown.state == "done" else "")
    said = f"Loaded {name.strip()}.{dropped}"
    try:  # every other page says it too, and clears what it drew with the last model
        jobs.reset(message=LOADED + said)
    except JobBusyError:  # a job started while the model loaded: the pages show it
        pass
    return (said, *loaded_model())


def loaded_model(box: str | None = None) -> tuple:
    """The model line, the layers, the Model box (`box`: the page that loaded it keeps what was typed) and Try a
    prompt's four galleries and note, for a model just loaded."""
    return (model_info(), gr.update(choices=panels.layer_choices(service.model), value="all"),
            gr.skip() if box is None else box, None, None,
            no_erased(), None, f"{service.name} is loaded: Generate draws with it (no erased model of it yet).")


def on_try(prompt, seed):
    """Both models on one prompt; bad input is said in the note, and the galleries keep what they showed."""
    try:
        original, erased = service.try_prompt(prompt, num_images=4, seed=image_seed(seed))
    except (TrustError, ValueError) as err:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"❌ {err}"
    note = f"Erased model: {erased.model}." if erased else \
        f"No erased model of {service.name} yet: run Erase first."
    if not prompt.strip():
        note += " The prompt is empty: this is what each model draws unprompted."
    num_tokens = service.model.num_tokens(prompt)
    if num_tokens > service.model.max_tokens:
        note += (f" The prompt has {num_tokens} tokens and the model reads {service.model.max_tokens}: "
                 "the end was cut.")
    note += unknown_note(service.model, prompt)
    erased_side = gr.update(value=erased.images, label=f"Erased model ({erased.model})") if erased else no_erased()
    return (*map(as_files, (original.images, original.heat_maps)), as_files(erased_side),
            as_files(erased.heat_maps if erased else []), note)


def draw_heat(snapshot, layer, step_idx, token_pos):
    if snapshot.preview is None:  # no job yet, a reset, or a new job before its first preview: nothing stale
        return [], gr.update(value=None, label="heat map of a word", alt_text=None), gr.skip()
    layer = None if layer in (None, "all") else layer
    step_idx = None if step_idx in (None, -1) else int(step_idx)
    zoom, token = panels.token_zoom(snapshot, token_pos, layer, step_idx)
    steps = panels.timestep_choices(snapshot.preview)
    where = panels.short_attention_layer(layer) if layer else "all layers"  # (as the Layer box names it)
    when = dict((idx, label) for label, idx in steps).get(step_idx) if step_idx is not None else None
    label = f"heat map of “{token}”: {where}, {when or 'all denoising steps'}"
    return (as_files(panels.heat_gallery(snapshot, layer, step_idx)),
            as_files(gr.update(value=zoom, label=label, alt_text=f"{label}; red where the sample's pixels attend "
                                                                 "to the word, blue where they do not")),
            gr.update(choices=[("all steps", -1), *steps]))


def described(picture, text: str):
    """A figure with its words for a screen reader (the numbers in it are only pixels otherwise)."""
    return None if picture is None else gr.update(value=picture, alt_text=text)


def on_selectors(layer, step_idx, token_pos):
    return draw_heat(jobs.snapshot(), layer, step_idx, token_pos)


def on_token_click(layer, step_idx, evt: gr.SelectData):
    if evt.index == 0:  # the gallery's first picture is the sample itself, no word: the zoom stays as it is
        return gr.skip(), gr.skip()
    token_pos = evt.index - 1
    return (token_pos, *draw_heat(jobs.snapshot(), layer, step_idx, token_pos)[1:2])


def on_tick(layer_name, step_idx, token_pos, seen_version, seen_step, seen_end, mine=0, visitor=None):
    """Redraw what moved since this page's last snapshot: every panel shows the current job, or nothing.

    `seen_end` is the outcome this page last showed ("3:done", "4:failed", "" for none): the end-of-run
    panels and the message box change only when it does, so a message from a button stays until then. `mine`
    is the run this page started (its message box keeps what Erase said); `visitor` this browser, whose ticks
    tell the job that its owner is still there.
    """
    jobs.seen(visitor or "")
    s = jobs.snapshot()
    if s.version == seen_version:  # nothing new; a running job's clock still moves (preparing takes seconds)
        return {progress: panels.progress_html(s, time.time()) if s.running else gr.skip()}
    heat, zoom, steps = draw_heat(s, layer_name, step_idx, token_pos)
    out = {progress: panels.progress_html(s, time.time()), heat_gallery: heat, token_image: zoom,
           timestep: steps, seen: s.version, seen_at: s.step,
           stop_btn: gr.update(interactive=s.state in ("preparing", "running")),
           history: panels.history_markdown(s.history)}
    no_neurons = s.config is not None and s.config.method in panels.NO_NEURONS and s.state != "idle"
    if s.reports:
        out |= {curves: described(panels.curves_image(s), panels.curves_text(s)), probe: panels.probe_text(s)}
    else:  # a new job (or ConceptPrune, which takes no steps), or a reset: nothing of an earlier run stays
        out |= {curves: None, probe: "" if s.state == "idle" else panels.probe_text(s)}
    if no_neurons:  # a baseline: why the neuron figures are empty, not a blank (nor a figure drawn to be dropped)
        out[saliency] = out[mask] = described(panels.no_neurons_image(s.config.method),
                                              panels.NO_NEURONS[s.config.method])
    else:
        out[saliency] = described(panels.saliency_image(s), panels.saliency_title(s)) if s.reports else None
        out[mask] = described(panels.mask_image(s, seen_step or None),
                              panels.mask_title(s, seen_step or None)) if s.masks else None
    measured = s.state == "finishing" and bool(s.panels)  # panels and metrics shown while the attacks run
    end = f"{s.run_idx}:{s.state}" if s.state in ("done", "failed") else (f"{s.run_idx}:measured" if measured else "")
    if s.state == "idle" and (s.message in (STOPPED_EARLY, RESET) or s.message.startswith(LOADED)):
        end = f"idle:{s.version}"  # no run, but a stop, a Reset or a model load has ended the last one
    run = run_name(s)
    if end != seen_end:
        done = s.state == "done"
        out |= {seen_done: end, before_after: panels.panel_html(s.panels if done or measured else ()),
                metrics: panels.metrics_markdown(s.metrics if done or measured else None,
                                                 pending=panels.ATTACK_COLUMNS if measured else ()),
                download: gr.update(value=str(s.export_path) if done and s.export_path else None,
                                    visible=done and s.export_path is not None)}
        if measured:
            out[message] = (f"⏳ {run} is measured (before/after and metrics below); the attacks on the "
                            "erased model take a minute or two more.")
        elif done and s.result is not None and s.result.stop_reason == "nan":  # the last good weights, not an erasure
            out[message] = f"⚠️ {run} stopped: {s.message}."
        elif done and s.result is not None and s.result.stop_reason == "stopped":  # what the steps so far did
            ua, note = (s.metrics or {}).get("UA"), ""
            if ua is not None and ua < GOOD_UA:
                note = f" The target is still in {1 - ua:.0%} of its samples (UA {ua:.2f})."
            if broken := damage(s.metrics):
                note += f" It {broken}."
            out[message] = f"⏹ {run} ended: {s.message}.{note}"
        elif done and (s.metrics or {}).get("UA") is not None and s.metrics["UA"] < GOOD_UA:
            # the probe that stopped it draws a few short samples; the final measurement may disagree
            out[message] = (f"⚠️ {run} ended: {s.message}, but the final measurement still finds the target in "
                            f"{1 - s.metrics['UA']:.0%} of its samples (UA {s.metrics['UA']:.2f}): not erased.")
        elif done and (broken := damage(s.metrics)):  # erased, and what should stay went with it
            out[message] = f"⚠️ {run} ended: {s.message}, but it {broken}."
        elif done and (caveat := attack_caveat(s.metrics)):  # erased as measured, yet an attack brings it back
            out[message] = (f"✅ {run} ended: {s.message}. The target is gone from its prompts, but an attack "
                            f"brings it back in half its samples or more (ASR: {caveat}; see Metrics).")
        elif done and (s.metrics or {}).get("UA") is None:  # a model without a concept detector: nothing measured
            out[message] = (f"ℹ️ {run} ended: {s.message}. This model has no concept detector, so whether the "
                            "target is gone is not measured: compare the before and after pictures, or Try a prompt.")
        elif done:
            out[message] = f"✅ {run} ended: {s.message}."
        elif s.state == "failed":
            out[message] = f"❌ {run} failed: {s.message.removeprefix('the job failed: ')}"
        elif s.state == "idle" and s.message == STOPPED_EARLY:
            out[message] = f"⏹ The job {s.message}."
        elif s.state == "idle" and s.message == RESET:  # (pressed here or on another page: the same words)
            out |= dict(zip((message, erased_images, erased_heat, try_note), after_reset()))
        elif s.state == "idle" and s.message.startswith(LOADED):  # what the model's pictures and layers were go
            out |= dict(zip((message, info, layer, model_name, original_images, original_heat, erased_images,
                             erased_heat, try_note), (s.message.removeprefix(LOADED), *loaded_model(service.name))))
        elif s.running and s.run_idx != mine:  # another page's new job: not the last run's outcome any more
            out[message] = running_note(s, visitor)
        if done:  # Try a prompt's note may still say there is no erased model; its erased pictures are the last one's
            out[try_note] = f"Run {s.run_idx}'s erased model is ready: press Generate to compare it with the original."
            out[erased_images] = no_erased()
            out[erased_heat] = None
    return {component: as_files(value) for component, value in out.items()}


# Gradio copies every picture and export it sends into its own cache: each hour, copies older than a day go
# (a page open that long gets them again on reload)
with gr.Blocks(title="TRuST: watch a concept being erased", delete_cache=(3600, 86400)) as demo:
    gr.Markdown("# TRuST: watch a concept being erased\nTRuST finds the neurons that carry a concept from "
                "cross-attention saliency, re-estimates them as it goes, and fine-tunes only those. Pick a "
                "scenario, press **Erase**, and watch.")
    info = gr.Markdown("Loading the model…", elem_id="model-info")
    seen, seen_at, token_pos = gr.State(-1), gr.State(0), gr.State(-1)  # token -1: the last word
    seen_done = gr.State("")  # the outcome (run:state) whose panels this page shows
    started = gr.State(0)  # the run this page started last (0: none)
    visitor = gr.BrowserState("", storage_key="trust-visitor")  # this browser (local storage): whose jobs are whose
    with gr.Row():
        with gr.Column(scale=2, min_width=340):
            preset = gr.Radio(list(SCENARIOS), value=FIRST_PRESET, label="Scenario")
            start_fields = preset_fields(FIRST_PRESET)
            targets = gr.Textbox(start_fields[0], label="Target (erase this; one prompt per line)", lines=2)
            anchor = gr.Textbox(start_fields[1], label=(
                'Anchor (what each target becomes: one per line, or one for all; "" is the empty prompt; '
                "left empty: the target with one attribute of the concept changed)"), lines=2)
            anchor_auto = gr.State(start_fields[1])  # the anchor last filled in for the targets
            neighbours = gr.Textbox(start_fields[2], label=(
                "Neighbours (keep these; one per line; left as filled in: the target with one attribute of the "
                "concept changed)"), lines=3)
            neighbours_auto = gr.State(start_fields[2])  # the neighbours last filled in for the targets
            with gr.Accordion("Advanced", open=False):
                method = gr.Dropdown(list(METHODS), value=DEFAULT_METHOD, label="Method")
                defaults = dict(zip(ADVANCED_FIELDS, method_defaults(DEFAULT_METHOD)))
                with gr.Row():
                    max_steps = gr.Number(defaults["max_steps"], label="Steps (at most)")  # 2.5: refused, not rounded
                    lr = gr.Number(defaults["lr"], label="Learning rate")
                    seed = gr.Number(defaults["seed"], label="Seed")
                with gr.Row():
                    tau = gr.Number(defaults["tau"], label="τ (mask: z-score above)")
                    rho = gr.Number(defaults["rho"], label="ρ (top fraction; 0: use τ)")
                    eta = gr.Number(defaults["eta"], label="η (negative guidance)")
                with gr.Row():
                    lambda_cip = gr.Number(defaults["lambda_cip"], label="λ_cip")
                    lambda_csr = gr.Number(defaults["lambda_csr"], label="λ_csr")
                    lambda_pres = gr.Number(defaults["lambda_pres"], label="λ_pres (TRuST+P)",
                                            interactive="lambda_pres" in used_fields(DEFAULT_METHOD))
                with gr.Row():
                    model_name = gr.Textbox("shapes", scale=3, label=(
                        "Model: shapes, a hub id or an SD 1.x folder in the server's model folders"))
                    load_btn = gr.Button("Load model", scale=1)
            with gr.Row():
                erase_btn = gr.Button("Erase", variant="primary", elem_id="erase")
                stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop")
                reset_btn = gr.Button("Reset", elem_id="reset")
            message = gr.Markdown(elem_id="message")
            progress = gr.HTML("<div class='trust-progress'>no job has run yet</div>", elem_id="progress")
            probe = gr.Markdown(elem_id="probe")
        with gr.Column(scale=3):
            gr.Markdown(EXPLAIN["heat"])
            with gr.Row():
                layer = gr.Dropdown(["all"], value="all", label="Layer")
                timestep = gr.Dropdown([("all steps", -1)], value=-1, label="Denoising step")
            heat_gallery = gr.Gallery(label="Live sample and per-word heat maps", columns=5, height="auto",
                                      allow_preview=False, elem_id="heat")
            token_image = gr.Image(label="heat map of a word", height=220, elem_id="zoom")
    with gr.Row():  # side by side where each figure gets 520 px or more, else one under the other (its text
        #             is drawn at a fixed size: at a tablet's 768 px, halved, it was about 5 px tall)
        with gr.Column(min_width=520):
            gr.Markdown(EXPLAIN["saliency"])
            saliency = gr.Image(label="Saliency this step (layer × neuron)", show_label=False, elem_id="saliency")
        with gr.Column(min_width=520):
            gr.Markdown(EXPLAIN["mask"])
            mask = gr.Image(label="Neuron mask", show_label=False, elem_id="mask")
    gr.Markdown(EXPLAIN["curves"])
    curves = gr.Image(label="Losses, probe and mask size per layer", show_label=False, elem_id="curves")

    gr.Markdown("## Before and after\nThe original model (left of each pair) and the erased one (right), with the "
                "concept detector's verdict, drawn with the run's seed. The metrics count other samples "
                f"({OPTIONS.metric_samples} a prompt, paraphrases of the target too), so a pair may disagree "
                "with them. UA: share of target samples without the concept; IRA/CRA: neighbour/unrelated "
                "samples still drawn right; ASR: attacks that bring it back.")
    before_after = gr.HTML(panels.panel_html(()), elem_id="before-after")
    metrics = gr.Markdown(panels.metrics_markdown(None), elem_id="metrics")
    download = gr.DownloadButton("Export: erased weights, masks, config, report, images", visible=False,
                                 elem_id="export")

    gr.Markdown("## Try a prompt\nAny prompt, on the original and the erased model, same seeds, with heat maps.")
    with gr.Row():
        try_prompt = gr.Textbox("a red circle", label="Prompt", scale=4, elem_id="try-prompt")
        try_seed = gr.Number(0, label="Seed of the images", scale=1)  # 1.5: refused, not rounded
        try_btn = gr.Button("Generate", variant="primary", scale=1, elem_id="try")
    try_note = gr.Markdown(elem_id="try-note")
    with gr.Row():
        with gr.Column():
            original_images = gr.Gallery(label="Original model", columns=4, height="auto", elem_id="try-original")
            original_heat = gr.Gallery(label="Original: heat maps of the first image", columns=6, height="auto")
        with gr.Column():
            erased_images = gr.Gallery(label="Erased model", columns=4, height="auto", elem_id="try-erased")
            erased_heat = gr.Gallery(label="Erased: heat maps of the first image", columns=6, height="auto")

    gr.Markdown("## Runs since the server started\nCompare TRuST and a baseline side by side.")
    history = gr.Markdown(panels.history_markdown(()), elem_id="runs")

    advanced = [max_steps, lr, tau, rho, lambda_cip, lambda_csr, lambda_pres, eta, seed]
    timer = gr.Timer(0.5)  # snapshots are cheap to read; unchanged ones send nothing
    draft = gr.BrowserState(None, storage_key="trust-form")
    drafted = [targets, anchor, neighbours, anchor_auto, neighbours_auto, method, *advanced, try_prompt, try_seed]
    demo.load(on_page_load, [draft, visitor],
              [info, model_name, layer, *drafted[:6], *advanced, try_prompt, try_seed, message, visitor],
              queue=False)  # a plain request: no queue round trip
    gr.on([c.change for c in drafted], on_draft, drafted, draft, queue=False, show_progress="hidden")
    # .input: what the user picks (not the page load filling the form) fills in presets and defaults
    preset.input(on_preset, preset, [targets, anchor, neighbours, anchor_auto, neighbours_auto])
    targets.change(on_targets, [targets, anchor, anchor_auto, neighbours, neighbours_auto, preset],
                   [anchor, anchor_auto, neighbours, neighbours_auto, preset], show_progress="hidden",
                   queue=False)  # a plain request: it answers at once, even while a job's live panels queue
    method.input(on_method, method, advanced)
    # these three answer within a second, so the message box shows no queue timer meanwhile
    erase_btn.click(on_erase, [visitor, started, preset, targets, anchor, neighbours, method, *advanced],
                    [message, started], show_progress="hidden")
    stop_btn.click(on_stop, visitor, message, show_progress="hidden")
    reset_btn.click(on_reset, visitor, [message, erased_images, erased_heat, try_note], show_progress="hidden")
    # the Anchor and Neighbours boxes that follow the targets follow the model's rules too (ShapesWorld's or none)
    load_btn.click(on_load_model, model_name, [message, info, layer, model_name, original_images, original_heat,
                                                erased_images, erased_heat, try_note]).then(
        on_targets, [targets, anchor, anchor_auto, neighbours, neighbours_auto, preset],
        [anchor, anchor_auto, neighbours, neighbours_auto, preset], show_progress="hidden")
    gr.on([try_btn.click, try_prompt.submit], on_try, [try_prompt, try_seed],
          [original_images, original_heat, erased_images, erased_heat, try_note], concurrency_id="generate")
    gr.on([layer.change, timestep.change], on_selectors, [layer, timestep, token_pos],
          [heat_gallery, token_image, timestep], show_progress="hidden")
    heat_gallery.select(on_token_click, [layer, timestep], [token_pos, token_image], show_progress="hidden")
    timer.tick(on_tick, [layer, timestep, token_pos, seen, seen_at, seen_done, started, visitor],
               [progress, heat_gallery, token_image, timestep, seen, seen_at, seen_done, stop_btn, history,
                saliency, mask, curves, probe, before_after, metrics, download, message, try_note, erased_images,
                erased_heat, info, layer, model_name, original_images, original_heat],
               show_progress="hidden", concurrency_limit=8, concurrency_id="tick")

if __name__ == "__main__":
    # A terminated server (docker stop, a supervisor) exits as on Ctrl-C, so its temporary folder is removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    if service.device == "cpu":
        # A job and Try a prompt run at once, each on torch's intra-op threads. With every core each, they
        # oversubscribe the CPU and every op waits for a descheduled thread: 10-30x slower when another
        # process holds a core (README, App latency). Half the cores each keeps both moving.
        torch.set_num_threads(max(1, torch.get_num_threads() // 2))
    service.load_in_background()  # ready by the time the first page asks, yet not at import
    demo.queue(default_concurrency_limit=2).launch(allowed_paths=[str(WORKDIR)], css=CSS, js=PAGE_JS)
