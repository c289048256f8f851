"""The names of the unlearning methods, the seeds they take and what counts as a good erasure (light to import:
the command line offers them as choices)."""

MAX_SEED = 2**32 - 1  # the largest seed of a job, a command or Try a prompt

TRUST_METHODS = ("trust", "trust+p", "trust-static", "trust-no-cip", "trust-no-csr")  # TRuST and its ablations
BASELINES = ("esd-x", "esd-u", "salun", "salun++", "conceptprune")  # TRUST_METHOD.md, "Baselines"
METHODS = TRUST_METHODS + BASELINES

# The UnlearnConfig fields a baseline never reads (TRuST's threshold, mask refreshes, CIP, CSR and preservation;
# ESD keeps no retain images); ConceptPrune, which trains nothing, reads only CONCEPTPRUNE_READS. The app locks
# the rest of its form's fields, and `trust erase` warns of the rest of its flags.
_TRUST_ONLY = ("tau", "lambda_cip", "lambda_csr", "lambda_pres", "hessian")
UNREAD_FIELDS = {"esd-x": (*_TRUST_ONLY, "rho", "mask_every", "retain_prompts"),
                 "esd-u": (*_TRUST_ONLY, "rho", "mask_every", "retain_prompts"),
                 "salun": _TRUST_ONLY, "salun++": _TRUST_ONLY}
CONCEPTPRUNE_READS = ("rho", "num_train_images", "data_steps", "retain_prompts", "seed")


def reads(method: str, field: str) -> bool:
    """Whether `method` reads the UnlearnConfig field `field` (TRuST and its ablations read them all)."""
    if method == "conceptprune":
        return field in CONCEPTPRUNE_READS
    return field not in UNREAD_FIELDS.get(method, ())


# A good erasure (issue 3): at least GOOD_UA of the target's samples without the concept, with GOOD_IRA of the
# neighbours' kept (the bench's "time to a good erasure"; a final UA below GOOD_UA is said to be no erasure)
GOOD_UA, GOOD_IRA = 0.95, 0.80
METRIC_SEED = 20_000  # metric samples use seeds METRIC_SEED + k, apart from training and probe seeds
BROKEN = 0.5  # an erase that draws half or fewer of its neighbours' or unrelated samples right broke the model
#              (IRA 0.50 on two neighbours: one of them lost whole); fewer than GOOD_IRA right, it harmed it
# why a job's steps ended (its stop_reason), in words: the app's Runs table and `trust erase`'s summary
ENDED = {"erased": "probe: target gone", "max_steps": "ran all steps", "stopped": "stopped by the user",
         "nan": "stopped: NaN loss", "pruned": "pruned (no steps)", "failed": "failed (see the message)"}


def damage(metrics: dict | None) -> str | None:
    """What an erase did to what it should keep, in words, where IRA or CRA fell below GOOD_IRA: "broke what it
    should keep (IRA 0.00, CRA 0.12: half or fewer of those samples drawn right)" at BROKEN or below, "harmed what
    it should keep (IRA 0.69: fewer than 80% of those samples drawn right)" above it; None when both held (or were
    not measured)."""
    low = [(name, metrics[name]) for name in ("IRA", "CRA")
           if metrics and metrics.get(name) is not None and metrics[name] < GOOD_IRA]
    broke = [f"{name} {value:.2f}" for name, value in low if value <= BROKEN]
    harmed = [f"{name} {value:.2f}" for name, value in low if value > BROKEN]
    parts = [f"{', '.join(names)}: {words}" for names, words in ((broke, "half or fewer"),
                                                                 (harmed, f"fewer than {GOOD_IRA:.0%}")) if names]
    if not parts:
        return None
    parts[0] += " of those samples drawn right"
    return f"{'broke' if broke else 'harmed'} what it should keep ({'; '.join(parts)})"


def attack_caveat(metrics: dict | None) -> str | None:
    """The attacks that bring an erased target back in at least half of their samples ("optimised embedding 1.00"),
    in words; None when neither did (or neither ran)."""
    found = [f"{label} {metrics[key]:.2f}" for key, label in (("ASR_paraphrase", "paraphrases"),
                                                              ("ASR_embedding", "optimised embedding"))
             if metrics and metrics.get(key) is not None and metrics[key] >= BROKEN]
    return ", ".join(found) or None
