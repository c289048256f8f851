"""The names of the unlearning methods and the seeds they take (light to import: the command line
offers them as choices)."""

MAX_SEED = 2**32 - 1  # the largest seed of a job, a command or Try a prompt

TRUST_METHODS = ("trust", "trust+p", "trust-static", "trust-no-cip", "trust-no-csr")  # TRuST and its ablations
BASELINES = ("esd-x", "esd-u", "salun", "salun++", "conceptprune")  # TRUST_METHOD.md, "Baselines"
METHODS = TRUST_METHODS + BASELINES
