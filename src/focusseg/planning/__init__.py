"""raw dataset -> fingerprint.json -> plan.json."""
