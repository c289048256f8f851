"""The `trust` command line.

    trust generate --model shapes --prompt "a red circle" --num-images 4 --seed 0 --out out/
    trust eval --model shapes --prompts prompts.txt --samples 8 --seed 0 --out eval.json
    trust erase --preset combination --method esd-x --out runs/esd-x/
    trust export --model sd15/ --erased runs/x/ --out sd15-erased/   # a diffusers pipeline folder (SD only)
    trust bench --out bench/           # every method x scenario x seed: bench.json, bench.md (--quick: a smoke run)
    trust train-shapes            # rebuild assets/shapes (about an hour on 2 cores)
    trust train-detector          # rebuild assets/shapes/detector (minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from .errors import TrustError, shorten
from .methods import ENDED, GOOD_UA, MAX_SEED, METHODS, METRIC_SEED, attack_caveat, damage, reads
from .shapes.world import said_unknown

MAX_SAMPLES = 1000  # samples per prompt that `trust eval` and `trust erase` draw at most


def _shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N), 0 <= K < N."""
    index, _, count = text.partition("/")
    try:
        k, n = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N (e.g. 0/2), got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"K/N needs 0 <= K < N, got {text!r}")
    return k, n


def _brief(text: str) -> str:
    """A number as typed, cut for an error message (a 4,000-digit --seed is not echoed in full)."""
    text = str(text)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} characters)"


def whole_number(low: int, high: int | None = None):
    """An argparse type: a whole number in low..high (no upper bound when high is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {_brief(text)!r}") from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {_brief(value)}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be within {low}..{high}, got {_brief(value)}")
        return value
    return parse


def _number(low: float, high: float):
    """An argparse type: a number in low..high (NaN and infinities are refused)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {_brief(text)!r}") from None
        if not low <= value <= high:  # NaN fails this too
            raise argparse.ArgumentTypeError(f"must be within {low:g}..{high:g}, got {_brief(text)}")
        return value
    return parse


_bench_seeds = whole_number(1, 1000)
_ddim_steps = whole_number(1, 1000)
_guidance = _number(0, 50)
_seed = whole_number(0, MAX_SEED)
_samples = whole_number(1, MAX_SAMPLES)


def writable_folder(path: Path, what: str = "--out", empty: bool = False, overwrite_flag: bool = True) -> None:
    """Make `path` (a folder) and check, before any work, that files can be written into it; `empty`: refuse
    one that already holds files (another run's would mix with this one's; `overwrite_flag`: the command has
    --overwrite to offer)."""
    if path.exists() and not path.is_dir():
        raise TrustError(f"{what} {path} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a parent that is a file, a read-only place, ...
        raise TrustError(f"cannot make {what} {path}: {err.strerror or err}") from None
    if empty and any(p.name != LOCK_FILE for p in path.iterdir()):
        raise TrustError(f"{what} {path} is not empty; choose a new folder"
                         + (", or add --overwrite to replace a previous run's files there" if overwrite_flag else ""))
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise TrustError(f"cannot write into {what} {path}: {err.strerror or err}") from None


LOCK_FILE = ".trust-erase.lock"  # in --out while a `trust erase` writes there: the process id that does


def writer_of(out: Path) -> int | None:
    """The process id of the `trust erase` writing into `out` now, or None (no lock, or a stale one: removed)."""
    lock = out / LOCK_FILE
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)  # (signal 0: does it exist?)
    except ProcessLookupError:  # the run that wrote it was killed: nothing holds the folder
        lock.unlink(missing_ok=True)
        return None
    except PermissionError:  # another user's live process
        pass
    return pid


def refuse_if_written(out: Path) -> None:
    """A TrustError naming the `trust erase` that is writing into `out`, if one is."""
    if (pid := writer_of(out)) is not None:
        raise TrustError(f"--out {out} is being written by another `trust erase` (process {pid}); wait for it to "
                         "end, or choose another folder")


def claim(out: Path) -> Path:
    """Make `out` and hold it for this process (a lock file made with O_EXCL, so of two runs started together
    one wins); the other is refused, naming the process that writes there."""
    writable_folder(out)
    while True:
        try:
            fd = os.open(out / LOCK_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            refuse_if_written(out)
            continue  # a stale lock, removed: try again
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return out / LOCK_FILE


def missing_folders(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first: what making `path` would make."""
    return [p for p in (path.absolute(), *path.absolute().parents) if not p.exists()]


@contextlib.contextmanager
def out_folder(path: Path, what: str = "--out", empty: bool = False, overwrite_flag: bool = True,
               partial: bool = False):
    """`writable_folder`, for the command's work in the `with` block: if that fails (Ctrl-C too), the folders
    made for it are removed again where they are still empty, so a failed command leaves no empty --out behind.
    `partial`: the block writes into `path` itself, and the files and folders it added there are removed first
    (half a set of images or a pipeline folder without its UNet is no result; what was there before stays)."""
    made = missing_folders(path)
    writable_folder(path, what, empty, overwrite_flag)
    before = set(path.iterdir())
    try:
        yield
    except BaseException:
        if partial:
            for added in set(path.iterdir()) - before:
                shutil.rmtree(added) if added.is_dir() and not added.is_symlink() else added.unlink(missing_ok=True)
        remove_empty(made)
        raise


def remove_empty(folders: list[Path]) -> None:
    """Remove these folders, deepest first, while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): the ones above hold it
            break


def previous_run_files(out: Path, names: tuple[str, ...]) -> list[Path]:
    """What --overwrite removes from `out`: a previous erase's files (`names`). Anything else there, a JSON file
    that is not a run's or an image folder with other files, is refused, and nothing is removed."""
    foreign = [p.name for p in sorted(out.iterdir()) if p.name not in names and p.name != LOCK_FILE]
    for name, key in (("report.json", "metrics"), ("config.json", "config")):
        if (out / name).exists():
            try:
                content = json.loads((out / name).read_text())
            except (OSError, ValueError):
                content = None
            if not (isinstance(content, dict) and key in content):  # (a truncated one may have been a run's)
                foreign.append(f"{name}, which does not read as an erase's" if content is None else name)
    images = out / "images"
    if images.exists():
        if not images.is_dir():
            foreign.append("images")
        else:
            foreign += [f"images/{p.name}" for p in sorted(images.iterdir())
                        if not (p.is_file() and p.suffix == ".png" and p.name.startswith(("before_", "after_")))]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise TrustError(f"--out {out} holds files that are not a previous erase's ({shown}); --overwrite replaces "
                         "only those, so nothing was removed: choose a new folder")
    return [out / name for name in names if (out / name).exists()]


def _out_path(text: str) -> Path:
    if not text.strip():  # (Path("") is the working folder)
        raise argparse.ArgumentTypeError("must not be empty: give the folder (or file) to write")
    return Path(text)


def _model_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty: give 'shapes', a local folder or a hub id")
    return text.strip()


def _add_model_args(parser: argparse.ArgumentParser, seed: str = "seed of the first image of each prompt (image k: "
                    "seed + k)") -> None:
    parser.add_argument("--model", default="shapes", type=_model_name,
                        help="'shapes' (embedded), a local diffusers folder, or a hub id (default: shapes)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--seed", type=_seed, default=0, help=f"{seed}, 0..2^32-1 (default: 0)")


def cmd_generate(args: argparse.Namespace) -> None:
    from PIL import Image

    from .attention import CrossAttentionRecorder
    from .generation import generate, prompt_slug
    from .models import load_model
    from .visualize import save_figure, to_uint8, token_figure

    images = [(prompt, args.seed + k) for prompt in args.prompt for k in range(args.num_images)]  # image k: seed + k
    stems = [f"{idx:03d}_{prompt_slug(prompt)}_seed{seed}" for idx, (prompt, seed) in enumerate(images)]
    paths = [args.out / f"{stem}{end}" for stem in stems for end in (".png", "_heatmaps.png")]
    taken = [path for path in paths if path.exists() or path.is_symlink()]  # (checked before any work)
    if any(path.is_dir() for path in taken):
        raise TrustError(f"--out {args.out} holds a folder named {next(p for p in taken if p.is_dir()).name}, where "
                         "an image would go; choose a new folder")
    if taken and not args.overwrite:
        shown = ", ".join(path.name for path in taken[:2]) + (f" and {len(taken) - 2} more" if len(taken) > 2 else "")
        raise TrustError(f"--out {args.out} already holds {shown}, which these images would replace: choose a new "
                         "folder, or add --overwrite")
    with out_folder(args.out, partial=True):
        model = load_model(args.model, device=args.device)
        with CrossAttentionRecorder(model.unet) as recorder:
            output = generate(model, args.prompt, num_images_per_prompt=args.num_images, seed=args.seed,
                              num_inference_steps=args.steps, guidance_scale=args.guidance, recorder=recorder)
        heat_maps = recorder.heat_maps()
        for idx, (image, prompt, stem) in enumerate(zip(output.images, output.prompts, stems)):
            Image.fromarray(to_uint8(image, max(128, image.shape[-1]))).save(args.out / f"{stem}.png")
            save_figure(token_figure(image, heat_maps, idx, model.tokens(prompt)), args.out / f"{stem}_heatmaps.png")
    n = len(output.images)
    print(f"wrote {n} image{'s' if n != 1 else ''} and {'their' if n != 1 else 'its'} heat maps to {args.out}")


def _is_eval_output(path: Path) -> bool:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and {"model", "results"} <= set(content)


def cmd_eval(args: argparse.Namespace) -> None:
    from .artifacts import load_erased, write_text_atomic
    from .evaluation import evaluate, read_prompts
    from .models import load_model

    prompts = read_prompts(args.prompts)
    if args.out.is_dir():
        raise TrustError(f"--out {args.out} is a folder; give the JSON file to write")
    if args.out.exists() and not _is_eval_output(args.out):  # a previous eval's verdicts are replaced, nothing else
        raise TrustError(f"--out {args.out} exists and is not a `trust eval` output; choose a new file name")
    with out_folder(args.out.parent, what="the folder of --out"):
        model = load_model(args.model, device=args.device)
        if args.erased is not None:
            model = load_erased(model, args.erased)
        results = evaluate(model, prompts, num_samples=args.samples, seed=args.seed)
        report = {"model": args.model, "erased": str(args.erased) if args.erased else None, "results": results}
        write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")  # a previous eval stays whole until then
    print(f"wrote the detector's verdicts on {len(prompts)} x {args.samples} samples to {args.out}")


PRESET_NAMES = ("red", "individual", "triangle", "combination", "conditional")  # individual: red
UNLEARN_FLAGS = (  # (flag, type, help); the field is the flag without dashes
    ("--max-steps", int, "fine-tuning steps at most, 1..10000"),
    ("--lr", float, "learning rate, above 0 and at most 1"),
    ("--batch-size", int, "noised target images per step, 1..256"),
    ("--eta", float, "negative-guidance strength, above 0 and at most 100"),
    ("--tau", float, "mask: saliency z-score threshold, -5..10"),
    ("--rho", float, "mask: top fraction of neurons instead of --tau, above 0 and at most 1"),
    ("--mask-every", int, "steps between mask refreshes (0: static mask)"),
    ("--lambda-cip", float, "weight of CIP, 0..1e6"),
    ("--lambda-csr", float, "weight of CSR, 0..1e6"),
    ("--lambda-pres", float, "weight of neighbour preservation (trust+p), above 0 and at most 1e6"),
    ("--lambda-kv", float, "trust+p: weight of keeping the kept prompts' keys and values, 0..1e6 (0: off)"),
    ("--retain-prompts", int, "ShapesWorld scenes without the concept kept beside the neighbours (0: none)"),
    ("--keep-energy", float, "trust+p: share of the neighbours' text directions the update leaves alone, 0 to "
                             "below 1 (0: off)"),
    ("--whiten", float, "TRuST: move K/V rows in whitened text coordinates, this ridge as a share of the mean "
                        "eigenvalue, 0..100 (0: off)"),
    ("--schedule", str, "TRuST's learning rate: constant or cosine (down to 0 at --max-steps)"),
    ("--hessian", str, "hutchinson or fisher"),
    ("--probe-every", int, "steps between detector probes (0: never)"),
    ("--stop-ira", float, "stop only once the probe also draws this share of neighbour samples right, 0..1"),
    ("--max-changed", float, "TRuST: a budget on the share of UNet weights changed, as a fraction above 0 and at "
                             "most 1 (0.02: 2%%; 1: no budget)"),
    ("--num-train-images", int, "images the frozen model makes for the targets (and the neighbours), 1..1024"),
    ("--data-steps", int, "DDIM steps of those images, 1..1000"),
)

def _field(flag: str) -> str:
    """The UnlearnConfig field (and argparse dest) of a flag of UNLEARN_FLAGS: --max-steps -> max_steps."""
    return flag[2:].replace("-", "_")


CONCEPTPRUNE_FLAGS = tuple(flag for flag, _, _ in UNLEARN_FLAGS if reads("conceptprune", _field(flag)))


def method_defaults_help() -> str:
    """What each method sets the flags of UNLEARN_FLAGS to when they are left out (for `trust erase --help`)."""
    import textwrap

    from .unlearn import UnlearnConfig

    def settings(config, only_differing_from=None) -> list[str]:
        out = []
        for flag, _, _ in UNLEARN_FLAGS:
            value = getattr(config, _field(flag))
            if value is None or (only_differing_from is not None
                                 and value == getattr(only_differing_from, _field(flag))):
                continue  # (tau or rho: a method sets one of them)
            out.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
        return out

    trust = UnlearnConfig.for_method("trust")
    lines = ["trust: " + ", ".join(settings(trust))]
    for method in METHODS:
        if method != "trust":
            config = UnlearnConfig.for_method(method)
            changed = settings(config, trust) + (["no --tau"] if config.tau is None else [])
            lines.append(f"{method}: as trust" + (", but " + ", ".join(changed) if changed else "")
                         + ("; it trains nothing, so only " + ", ".join(CONCEPTPRUNE_FLAGS) + " apply"
                            if method == "conceptprune" else ""))
    wrapped = [textwrap.fill(line, width=100, initial_indent="  ", subsequent_indent="      ",
                             break_on_hyphens=False) for line in lines]
    return "defaults of the flags above when left out, by --method:\n" + "\n".join(wrapped)


class _HelpWithMethodDefaults(argparse.Action):
    """-h for `trust erase`: the usual help, then each method's defaults (read from trust.unlearn only then, so
    that the other commands start without loading torch)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.epilog = method_defaults_help()
        parser.print_help()
        parser.exit()


def _with_anchors(targets, anchors) -> str:
    """'a red circle' (anchor 'a green circle'), ... as erase prints what it erases; "" is the empty prompt."""
    return ", ".join(f"{shorten(t)!r} ({f'anchor {shorten(a)!r}' if a else 'anchor: the empty prompt'})"
                     for t, a in zip(targets, anchors))


def cmd_erase(args: argparse.Namespace) -> int:
    from .concepts import PRESETS, concept_neighbours, open_prompt_warnings, scenario_from_prompts
    from .erase import ERASE_FILES, run_erase
    from .models import load_model
    from .unlearn import UnlearnConfig, check_erasable, for_model

    if args.target is None and args.preset is None:
        raise TrustError("give --target (a prompt to erase) or --preset")
    if args.target is not None and not all(target.strip() for target in args.target):
        raise TrustError("--target must not be empty")
    target, more_targets = (None, ()) if args.target is None else (args.target[0], tuple(args.target[1:]))
    if args.neighbours and args.no_neighbours:
        raise TrustError("give --neighbour or --no-neighbours, not both")
    scenario = scenario_from_prompts(target, [] if args.no_neighbours else (args.neighbours or None),
                                     anchor=args.anchor, unrelated=args.unrelated or None, preset=args.preset,
                                     more_targets=more_targets)
    preset = PRESETS[args.preset] if args.preset else None
    if preset is not None and target is not None and scenario.concept != preset.concept:  # its prompts would not fit
        raise TrustError(f"--target {shorten(target)!r} is not the {args.preset} preset's concept ("
                         f"{scenario.concept.describe()}, not {preset.concept.describe()}); leave out --preset to "
                         "erase it with neighbours of its own")
    overrides = {_field(flag): getattr(args, _field(flag)) for flag, _, _ in UNLEARN_FLAGS}
    try:
        config = UnlearnConfig.for_method(args.method, seed=args.seed, **overrides)
    except ValueError as err:  # name the flags the user typed, not the config's fields
        said = re.sub(r"\b(" + "|".join(sorted(overrides, key=len, reverse=True)) + r")\b",
                      lambda m: "--" + m.group(1).replace("_", "-"), str(err))
        raise TrustError(re.sub(r"\bmethod '([^']+)'", r"--method \1", said)) from None
    unread = [flag for flag, _, _ in UNLEARN_FLAGS
              if not reads(args.method, _field(flag)) and getattr(args, _field(flag)) is not None]
    if unread and args.method == "conceptprune":  # training-free: it prunes once, with no steps or rate
        print(f"warning: conceptprune trains nothing, so {', '.join(unread)} change nothing", file=sys.stderr)
    elif unread:
        print(f"warning: {args.method} does not read {', '.join(unread)} (TRuST's mask and terms), so "
              f"{'they change' if len(unread) > 1 else 'it changes'} nothing", file=sys.stderr)
    if args.out.exists() and not args.out.is_dir():  # --out, before any work (it is made only once all is checked)
        raise TrustError(f"--out {args.out} is a file; give a folder")
    missing = missing_folders(args.out)
    nearest = missing[-1].parent if missing else args.out.absolute()  # the folder --out would be made in
    if not nearest.is_dir() or not os.access(nearest, os.W_OK | os.X_OK):
        raise TrustError(f"cannot make --out {args.out}: {nearest} is "
                         + ("a file" if not nearest.is_dir() else "not writable"))
    if args.out.is_dir():  # (checked before the model loads, and again once the folder is held)
        refuse_if_written(args.out)
        if any(args.out.iterdir()):
            if not args.overwrite:
                writable_folder(args.out, empty=True)  # (says why, and what to do)
            previous_run_files(args.out, ERASE_FILES)  # anything but a previous run's files: refused now
    model = load_model(args.model, device=args.device)
    check_erasable(model, scenario)  # before a folder is made (or emptied) for it
    if (not scenario.neighbours and args.preset is None and not args.no_neighbours
            and model.detector is not None):  # a typed target: keep (and measure) its scene with one attribute changed
        derived = concept_neighbours(scenario.targets, scenario.concept)
        if derived:
            scenario = scenario_from_prompts(target, list(derived), anchor=args.anchor,
                                             unrelated=args.unrelated or None, more_targets=more_targets)
            print(f"keeping the neighbours {', '.join(map(repr, derived))} (measured as IRA; --neighbour to choose "
                  "others, --no-neighbours for none)", file=sys.stderr)
    if not scenario.neighbours and model.detector is not None:  # (without a detector nothing is measured)
        print("warning: no neighbours, so IRA (whether what is close to the target is kept) is not measured "
              "(--neighbour PROMPT gives one)", file=sys.stderr)
    elif not scenario.neighbours and config.method == "trust+p":  # (ShapesWorld keeps its retain scenes too)
        print("warning: no neighbours, and this model has no ShapesWorld scenes to keep, so trust+p preserves "
              "nothing (give --neighbour, or use --method trust)", file=sys.stderr)
    if model.detector is not None:
        for warning in open_prompt_warnings(scenario):
            print(f"warning: {warning}", file=sys.stderr)
    made = missing_folders(args.out)  # (the run's files are removed first on failure, so not `out_folder`)
    lock = claim(args.out)  # from here on --out is this run's alone (two runs started together: one is refused)
    try:  # what the folder holds now (another run may have ended there since the checks above)
        if not args.overwrite:
            writable_folder(args.out, empty=True)
        # --overwrite: a previous run's files (and only those) are put aside, and back if this one fails
        previous = previous_run_files(args.out, ERASE_FILES) if args.overwrite else []
    except BaseException:
        lock.unlink(missing_ok=True)
        remove_empty(made)
        raise
    aside = Path(tempfile.mkdtemp(prefix=".trust-previous-", dir=args.out.parent)) if previous else None
    for path in previous:
        path.rename(aside / path.name)
    try:
        shown = for_model(model, scenario)  # the anchors this model will use
        concept = ""  # what the detector decides, so that a word it cannot read ("circles") is seen to drop out
        if model.detector is not None:
            concept = f"; the detector checks the concept as {scenario.concept.describe()}"
            if unknown := model.unknown_words(*scenario.targets):
                concept += f" (words the model never trained on are no part of it: {said_unknown(unknown)})"
        print(f"erasing {_with_anchors(shown.targets, shown.target_anchors)}{concept}", file=sys.stderr)
        started = time.perf_counter()
        report = run_erase(model, scenario, config, args.out, metric_samples=args.metric_samples,
                           progress=not args.no_progress, attacks=not args.no_attacks)
        seconds = (f"{report['wall_seconds']:.0f} s to erase ({time.perf_counter() - started:.0f} s with the "
                   "measuring)")
    except BaseException:  # (Ctrl-C too) the new run's files go, the previous run's come back
        if args.out.is_dir():  # (it held nothing else: checked above)
            for path in (args.out / name for name in ERASE_FILES):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        if aside is not None:
            for path in aside.iterdir():
                path.rename(args.out / path.name)
            aside.rmdir()
        lock.unlink(missing_ok=True)
        remove_empty(made)  # the folders made for this run, unless something else was put there
        raise
    lock.unlink(missing_ok=True)
    if aside is not None:
        shutil.rmtree(aside)
    m = report["metrics"]
    unchanged = report["changed_fraction"] == 0
    missed = bool(m) and m["UA"] < GOOD_UA  # changed, but the final measurement still finds the target
    done = "nothing erased from" if unchanged else "tried to erase" if missed else "erased" if m else \
        "fine-tuned to erase"  # (no detector: whether it is gone is not measured)
    print(f"{done} {_with_anchors(report['targets'], report['anchors'])}")
    ended = ENDED.get(report["stop_reason"], report["stop_reason"])
    said = report["message"].split()[:1] == ended.split()[:1]  # "ran all 20 steps" says "ran all steps" already
    print(f"the steps ended{'' if said else f' ({ended})'}: {report['message']}")
    if m:
        ira = "— (no neighbours given)" if m["IRA"] is None else f"{m['IRA']:.2f}"
        print(f"UA {m['UA']:.2f}  IRA {ira}  "
              f"CRA {m['CRA']:.2f}  steps {report['steps']}  {seconds}  "
              f"changed {report['changed_fraction']:.2%} of the UNet  -> {args.out}")
    else:
        print(f"{model.name!r} has no concept detector, so UA, IRA and CRA are not measured; steps "
              f"{report['steps']}  {seconds}  changed {report['changed_fraction']:.2%} of the "
              f"UNet  -> {args.out}")
    if missed and not unchanged:  # the stopping probe draws a few short samples; the final ones decide
        print(f"warning: the final measurement still finds the target in {1 - m['UA']:.0%} of its samples (UA "
              f"{m['UA']:.2f} < {GOOD_UA}): not erased", file=sys.stderr)
    elif not unchanged and (broken := damage(m)):
        print(f"warning: it {broken}", file=sys.stderr)
    if report.get("ASR_paraphrase") is not None:
        print(f"attack success: paraphrases {report['ASR_paraphrase']:.2f}  "
              f"optimised embedding {report['ASR_embedding']:.2f}")
        if not missed and not unchanged and (caveat := attack_caveat(report)):
            print(f"warning: an attack brings the erased target back in half its samples or more ({caveat})",
                  file=sys.stderr)
    if unchanged:
        print(f"error: no weight changed, so {args.out} holds the original model (see the line above)",
              file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> None:
    from .artifacts import export_diffusers, load_erased
    from .models import load_model

    if not args.erased.is_dir():  # both folders are checked before the model loads
        raise TrustError(f"--erased {args.erased} is not a folder; give the --out folder of a `trust erase` run")
    with out_folder(args.out, empty=True, overwrite_flag=False, partial=True):
        model = load_model(args.model, device=args.device)
        if model.vae is None:
            raise TrustError(f"{args.model!r} is a pixel-space model (no VAE), not a Stable Diffusion pipeline; its "
                             "erase folder is used as it is: `trust eval --erased DIR`, or trust.load_erased in Python")
        erased = load_erased(model, args.erased)  # refuses a delta of another model, with the reason
        export_diffusers(erased, args.out)
    print(f"wrote the erased model to {args.out} (diffusers layout: StableDiffusionPipeline.from_pretrained loads it)")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import FULL, QUICK, run_bench
    from .concepts import PRESETS
    from .models import load_model

    settings = QUICK if args.quick else FULL
    methods = tuple(dict.fromkeys(args.methods or settings["methods"]))  # each once
    scenarios = tuple(dict.fromkeys(PRESETS[name].name for name in args.scenarios or settings["scenarios"]))
    seeds = args.seeds or settings["seeds"]
    if (args.out / "bench.json").exists() and not args.resume:
        raise TrustError(f"{args.out / 'bench.json'} exists; add --resume to continue it, or choose another --out")
    with out_folder(args.out):  # a run that fails before its first result leaves no empty --out
        model = load_model(args.model, device=args.device)

        ran = []

        def on_run(run: dict) -> None:
            ran.append(run)
            print(f"{run['scenario']:<12} {run['method']:<13} seed {run['seed']}  UA {run['UA']:.2f}  "
                  f"IRA {run['IRA']:.2f}  {run['steps']} steps  {run['wall_seconds']:.0f} s", flush=True)

        run_bench(model, methods, scenarios, seeds, args.out, quick=args.quick, attacks=not args.no_attacks,
                  resume=args.resume, on_run=on_run, shard=args.shard, anchor=args.anchor)
    if args.resume and not ran:
        print(f"nothing left to run: {args.out / 'bench.json'} holds every run of these settings"
              + (" this shard takes" if args.shard else ""))
    elif args.shard and not ran:  # (more shards than runs: this one takes none)
        print(f"this shard ({args.shard[0]}/{args.shard[1]}) takes none of the bench's runs: {args.out / 'bench.json'} "
              "holds no run")
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trust", description="TRuST: find, erase and watch concepts "
                                     "in text-to-image diffusion models")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images and per-token cross-attention heat maps")
    _add_model_args(gen)
    gen.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for more")
    gen.add_argument("--num-images", type=_samples, default=4, help=f"images per prompt, 1..{MAX_SAMPLES} (default: 4)")
    gen.add_argument("--steps", type=_ddim_steps, default=None, help="DDIM steps, 1..1000 (default: the model's)")
    gen.add_argument("--guidance", type=_guidance, default=None,
                     help="guidance scale, 0..50 (default: the model's)")
    gen.add_argument("--out", type=_out_path, required=True, help="folder for the PNGs")
    gen.add_argument("--overwrite", action="store_true", help="replace images of the same names in --out")
    gen.set_defaults(func=cmd_generate, parser=gen)

    ev = sub.add_parser("eval", help="the concept detector's verdict on samples of each prompt")
    _add_model_args(ev, seed="seed of the first image of each prompt (image k: seed + k); `trust erase` measures "
                    f"with {METRIC_SEED} and --samples 8 (report.json's metric_seed and metrics.num_samples), so those "
                    "give its figures again")
    ev.add_argument("--erased", type=Path, default=None, help="an erase folder written by `trust erase`")
    ev.add_argument("--prompts", type=Path, required=True, help="one prompt per line, or JSONL with 'prompt'")
    ev.add_argument("--samples", type=_samples, default=8, help=f"samples per prompt, 1..{MAX_SAMPLES} (default: 8)")
    ev.add_argument("--out", type=_out_path, required=True, help="the JSON file to write")
    ev.set_defaults(func=cmd_eval, parser=ev)

    er = sub.add_parser("erase", help="erase a concept with TRuST and write the erased-model artifacts",
                        add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    er.add_argument("-h", "--help", action=_HelpWithMethodDefaults, help="show this help, with each method's "
                    "defaults, and exit")
    _add_model_args(er, seed="seed of the training images, noise, timesteps and probes")
    er.add_argument("--target", action="append", default=None, help="the prompt to erase (default: the preset's); "
                    "repeat for more prompts of one concept ('a red circle', 'a red star': red)")
    er.add_argument("--anchor", default=None,
                    help="what the target becomes (default: its scene with one attribute of the concept changed, "
                         "e.g. 'a red circle' -> 'a green circle'; \"\" is the empty prompt)")
    er.add_argument("--neighbour", "--neighbor", action="append", default=[], dest="neighbours",
                    help="a close prompt to keep; repeat for more (default: the preset's; for a typed target on "
                    "a model with a detector, its scene with each attribute of the concept changed)")
    er.add_argument("--no-neighbours", "--no-neighbors", action="store_true", help="keep no neighbours (IRA is then "
                    "not measured)")
    er.add_argument("--unrelated", action="append", default=[], help="a far prompt to keep (for CRA)")
    er.add_argument("--preset", choices=sorted(PRESET_NAMES), default=None, help="a ShapesWorld scenario")
    er.add_argument("--method", choices=METHODS, default="trust",
                    help="TRuST, an ablation or a baseline (default: trust, the paper's; trust+p also keeps the "
                    "neighbours, and is the app's default)")
    er.add_argument("--out", type=_out_path, required=True, help="folder for the delta, masks, report and images")
    er.add_argument("--metric-samples", type=_samples, default=8,
                    help=f"samples per prompt for the metrics, 1..{MAX_SAMPLES} (default: 8)")
    er.add_argument("--overwrite", action="store_true", help="replace a previous run's files in --out")
    er.add_argument("--no-progress", action="store_true", help="no progress bar")
    er.add_argument("--no-attacks", action="store_true", help="skip the paraphrase and embedding attacks")
    for flag, kind, help_text in UNLEARN_FLAGS:
        er.add_argument(flag, type=kind, default=None, help=help_text)
    er.set_defaults(func=cmd_erase, parser=er)

    ex = sub.add_parser("export", help="write an erased Stable Diffusion model as a diffusers pipeline folder")
    ex.add_argument("--model", required=True, type=_model_name, help="the SD 1.x model the erase started from "
                    "(a local diffusers folder or a hub id)")
    ex.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    ex.add_argument("--erased", type=Path, required=True, help="an erase folder written by `trust erase`")
    ex.add_argument("--out", type=_out_path, required=True, help="a new or empty folder for the pipeline")
    ex.set_defaults(func=cmd_export, parser=ex)

    bench = sub.add_parser("bench", help="every method on every scenario and seed: bench.json and bench.md")
    bench.add_argument("--model", default="shapes", type=_model_name,
                       help="a model with a concept detector (default: shapes)")
    bench.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    bench.add_argument("--quick", action="store_true", help="a smoke run of a few minutes: trust and esd-x on "
                       "'combination', one seed, few steps")
    bench.add_argument("--methods", nargs="+", choices=METHODS, default=None, help="default: all (quick: 2)")
    bench.add_argument("--scenarios", nargs="+", choices=sorted(PRESET_NAMES), default=None,
                       help="default: red triangle combination conditional (quick: combination)")
    bench.add_argument("--seeds", type=_bench_seeds, default=None,
                       help="seeds 0..N-1, N in 1..1000 (default: 3; quick: 1)")
    bench.add_argument("--no-attacks", action="store_true", help="skip the attacks")
    bench.add_argument("--resume", action="store_true", help="keep the runs already in OUT/bench.json (same "
                       "settings) and run only the rest")
    bench.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N",
                       help="run only every N-th of the runs left, from the K-th (0-based): N processes, each with "
                       "its own --out copied from the same bench.json, split a bench (benchmarks/merge_bench.py "
                       "joins them)")
    bench.add_argument("--anchor", default=None,
                       help="one anchor for every target of every scenario (\"\": the empty prompt, as benchmarks/full "
                            "ran); default: each target's own (the preset's concept anchors)")
    bench.add_argument("--out", type=_out_path, required=True, help="folder for bench.json and bench.md")
    bench.set_defaults(func=cmd_bench, parser=bench)

    for name, module, what in (("train-shapes", "train", "the embedded ShapesWorld model"),
                               ("train-detector", "train_detector", "the ShapesWorld concept detector")):
        train = sub.add_parser(name, help=f"train {what} from a seed", add_help=False)
        train.set_defaults(func=None, module=module)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (kill, timeout, a batch system, a closed terminal), raised where the command is so that
    it stops as on Ctrl-C: what it cleans up on Ctrl-C (an --overwrite erase puts the previous run back) it cleans
    up then too."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stopped_by_signals(for_good: bool = False):
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP stop the `with` block (KeyboardInterrupt; `Terminated`): the first one
    does, and later ones are ignored while the block cleans up (a second Ctrl-C, or `timeout -s INT` signalling
    the process twice, cut that short: an --overwrite erase's previous run could stay put aside). The handlers
    are restored after, unless `for_good` and a signal came: the process is ending (in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kinds = [kind for kind in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if kind is not None]
    came = []

    def stop(signum, frame):
        for kind in kinds:
            signal.signal(kind, signal.SIG_IGN)
        came.append(signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    previous = {kind: signal.signal(kind, stop) for kind in kinds}
    try:
        yield
    finally:
        if not (for_good and came):
            for kind, handler in previous.items():
                signal.signal(kind, handler)


class _ReaderMayLeave:
    """stdout or stderr of the `trust` command, whose reader may go away (`trust erase ... | head -1`). Once it has,
    what is printed goes nowhere and the command carries on: its files are what counts. (Without this a print
    raised BrokenPipeError, and an erase run through `| head` exited 1 or 2 and could remove its finished result.)"""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_nowhere()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_nowhere()

    def _to_nowhere(self) -> None:  # the descriptor itself, so that the interpreter's last flush finds no pipe either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    as_command = argv is None  # the `trust` command itself (not a call from Python): its process ends after
    argv = sys.argv[1:] if argv is None else argv
    if as_command:
        sys.stdout, sys.stderr = _ReaderMayLeave(sys.stdout), _ReaderMayLeave(sys.stderr)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if args.func is None:  # the training scripts own their flags
            import importlib

            importlib.import_module(f"trust.shapes.{args.module}").main(rest, prog=f"trust {args.command}")
            return 0
        if rest:  # the subcommand's usage, not the top level's
            args.parser.error(f"unrecognized arguments: {' '.join(rest)}")
        with warnings.catch_warnings(), stopped_by_signals(for_good=as_command):
            warnings.simplefilter("always")
            shown = set()  # each message once: a long prompt is tokenised again and again, from many places

            def show(msg, *args, **kwargs):
                if str(msg) not in shown:
                    shown.add(str(msg))
                    print(f"warning: {msg}", file=sys.stderr)

            warnings.showwarning = show
            return args.func(args) or 0
    except (TrustError, ValueError, OSError) as err:  # (a config's message echoes a huge number in full)
        print("error: " + re.sub(r"\d{25,}", lambda m: _brief(m.group()), str(err)), file=sys.stderr)
        return 2
    except Terminated as stop:  # the shell's code for a process a signal ended: 128 + its number
        print(f"terminated ({signal.Signals(stop.signum).name}): stopped before it finished", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("interrupted: stopped before it finished", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
