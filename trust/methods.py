"""The names of the unlearning methods (light to import: the command line offers them as choices)."""

TRUST_METHODS = ("trust", "trust+p", "trust-static", "trust-no-cip", "trust-no-csr")  # TRuST and its ablations
BASELINES = ("esd-x", "esd-u", "salun", "salun++", "conceptprune")  # TRUST_METHOD.md, "Baselines"
METHODS = TRUST_METHODS + BASELINES
