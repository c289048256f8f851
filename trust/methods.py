"""The names of the unlearning methods, the seeds they take and what counts as a good erasure (light to import:
the command line offers them as choices)."""

MAX_SEED = 2**32 - 1  # the largest seed of a job, a command or Try a prompt

TRUST_METHODS = ("trust", "trust+p", "trust-static", "trust-no-cip", "trust-no-csr")  # TRuST and its ablations
BASELINES = ("esd-x", "esd-u", "salun", "salun++", "conceptprune")  # TRUST_METHOD.md, "Baselines"
METHODS = TRUST_METHODS + BASELINES

# A good erasure (issue 3): at least GOOD_UA of the target's samples without the concept, with GOOD_IRA of the
# neighbours' kept (the bench's "time to a good erasure"; a final UA below GOOD_UA is said to be no erasure)
GOOD_UA, GOOD_IRA = 0.95, 0.80
