"""ISSUE and orchestrate: the issuer, worker processes, warm-up and the run itself."""
